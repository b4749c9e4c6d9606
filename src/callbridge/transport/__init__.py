"""What both peers (Twilio's stream, the agent's socket) share about each WebSocket
library: `picows` and `aiohttp`."""
