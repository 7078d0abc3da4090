"""Stand-in Casera apps, copied into the local cloud's images as the package ``standin``.

They run on Debian bookworm's python3 with only python3-psycopg and python3-redis.
"""
