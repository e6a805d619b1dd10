"""Named configs: model presets (`"kind": "model"`) and training runs (`"kind": "train"`)."""
