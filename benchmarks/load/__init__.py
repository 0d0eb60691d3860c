"""Load generation: the Locust runner and users, the asyncio open-loop generator, recording, reports, the
server-side counters and the processes under test."""
