"""Package data: the Hetzner Cloud OpenAPI copy the emulator validates requests against."""
