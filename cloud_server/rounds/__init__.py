"""Rounds as one object: the coordinator (dispatch, validation, lifecycle, blob serving), the journal that
persists them and its read API."""
