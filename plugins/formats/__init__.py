"""Built-in dataset formats (``datasets[].type``) and chat templates: one plugin per module."""
