"""The Bills page in the Airflow UI: the plugin that declares it and the routes that serve it."""
