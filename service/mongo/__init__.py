"""MongoDB plumbing: one way to connect, where a MongoDB is found (a URI, Docker, `mongod`,
the embedded server), the embedded server itself, and the resumable change stream."""
