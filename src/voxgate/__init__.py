"""voxgate: a realtime voice gateway that speaks the OpenAI Realtime protocol."""

__version__ = "0.1.0"
