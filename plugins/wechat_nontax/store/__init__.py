"""The order database: connections, the orders and their holds, write-backs and history, quotas,
reads for the UI and the commands, and the schema migrations that make it."""
