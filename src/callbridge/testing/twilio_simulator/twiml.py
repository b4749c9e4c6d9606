"""Reading TwiML documents: the verbs of a ``<Response>``, or why it is not one."""

from __future__ import annotations

import xml.etree.ElementTree as ET

__all__ = ["local_tag", "parse_twiml"]


def local_tag(element: ET.Element) -> str:
    """The element's name without its namespace."""
    tag = element.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def parse_twiml(body: str) -> list[ET.Element] | str:
    """The verbs of a TwiML document, or the reason it is not one (a Twilio error code)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        return f"12100 TwiML parse failure: {exc}"
    if local_tag(root) != "Response":
        return f"12100 root element is <{local_tag(root)}>, not <Response>"
    return list(root)
