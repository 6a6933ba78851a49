"""The Asterisk edge: the FastAGI server and its call routes, the AMI client, FastAGI probes.
Thin asyncio shells around core/'s protocols."""
