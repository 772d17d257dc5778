"""Built-in training presets (YAML), loaded by name with `refface.train.config.load_config`."""
