"""The web page over a shape index (app.py, `make app`): search by text, photo or mesh, see the top k as
thumbnails with id and score, caption a chosen result.

Modules: actions.py (what each control does, plain functions over shape_index, no gradio), page.py (the gradio
layout and launch). Import webapp.actions without gradio installed; webapp.page needs requirements-app.txt.
"""
