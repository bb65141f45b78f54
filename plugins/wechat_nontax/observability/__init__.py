"""What a unit's monitoring sees: the metrics the tasks emit (`metrics`), the backlog gauges
read from the order database (`backlog`) and the endpoint that serves them (`endpoint`)."""
