"""Config schema, validation and locating the config tree."""
