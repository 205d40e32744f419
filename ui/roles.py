"""Who is looking: a researcher (everything released to the study) or a viewer (coarse results).

Roles come from a TOML file (`workbench ui --roles roles.toml`):

```toml
[default]
role = "researcher"          # local single-user mode; "viewer" for a board-room screen
min_count = 5                # a viewer never sees a count below this
[users]
"board@hospital.example" = "viewer"
```

When Streamlit authentication (`st.login`, OIDC in `.streamlit/secrets.toml`) is configured, the
signed-in user's e-mail picks the role from `[users]`; otherwise the default applies.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

RESEARCHER, VIEWER = "researcher", "viewer"


@dataclass(frozen=True)
class Role:
    name: str
    min_count: int = 5
    user: str = "local user"

    @property
    def viewer(self) -> bool:
        return self.name == VIEWER


def current() -> Role:
    config = _config()
    default = config.get("default", {})
    role, minimum = str(default.get("role", RESEARCHER)), int(default.get("min_count", 5))
    if _authentication_configured():
        if not st.user.is_logged_in:
            st.button("Sign in", on_click=st.login)
            st.stop()
        email = str(st.user.get("email", ""))
        return Role(str(config.get("users", {}).get(email, role)), minimum, email)
    return Role(role, minimum)


def _config() -> dict:
    path = os.environ.get("WORKBENCH_ROLES")
    return tomllib.loads(Path(path).read_text()) if path and Path(path).is_file() else {}


def _authentication_configured() -> bool:
    try:
        return "auth" in st.secrets
    except FileNotFoundError:
        return False
