"""``python -m casera.localcloud.neon``: run the Neon API emulator in the foreground."""

from casera.localcloud.neon.api import serve

if __name__ == "__main__":
    serve()
