"""Call records: what was said, heard and done on each call, kept in a database."""
