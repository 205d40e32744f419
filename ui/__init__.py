"""The researcher's dashboard (Streamlit): design, run and read studies; `workbench ui` starts it."""
