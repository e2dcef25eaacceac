"""Configuration: EndpointPickerConfig loading and shared value parsing."""
