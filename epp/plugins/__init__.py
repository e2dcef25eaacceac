"""Built-in plugins, one per module; each registers its type name with the registry on import."""
