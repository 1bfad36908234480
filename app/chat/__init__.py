"""The chat itself, without widgets: messages and conversations, their Qt adapters, the SQLite store,
replay recordings, and the controller that ties them to the engine client."""
