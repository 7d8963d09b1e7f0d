"""The optional central history service (bulk-loads agent results into PostgreSQL).

Not built yet: agents run fully serverless without it.
"""
