"""The signed-in user's profile."""

from __future__ import annotations

import falcon

from wardrobe.store.users import Users
from wardrobe.web.resources import json_body
from wardrobe.web.schemas import PROFILE_PATCH


class Me:
    def __init__(self, users: Users) -> None:
        self._users = users

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        profile = self._users.profile(req.context.user.id)
        if profile is None:  # the row was removed after this process saw it
            self._users.forget(req.context.user.id)
            raise falcon.HTTPNotFound(description="Reopen the Mini App to sign in again.")
        resp.media = profile

    def on_patch(self, req: falcon.Request, resp: falcon.Response) -> None:
        changes = json_body(req, PROFILE_PATCH)
        resp.media = self._users.update_profile(req.context.user.id, changes)
