"""Server side of the agents: registration tokens, agent records, the agent CA, the per-agent job queue
and the mutual-TLS listener the agents talk to."""
