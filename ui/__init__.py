"""Streamlit dashboard for researchers (issue: researcher dashboard; not built yet)."""
