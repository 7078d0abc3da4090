"""``python -m casera_localcloud.neon``: run the Neon API emulator in the foreground."""

from casera_localcloud.neon.api import serve

if __name__ == "__main__":
    serve()
