"""Translation tasks, one module per task family; `registry.load_task` finds built-in and user tasks."""
