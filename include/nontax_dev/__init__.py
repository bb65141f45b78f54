"""Command-line tools around the order store: migrations, loading orders, operator tools."""
