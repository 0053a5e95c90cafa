"""Tuning: the candidate schedules of a spec (space) and the tuner that compiles, times,
re-checks and records them (tuner); records.py holds the database they write."""
