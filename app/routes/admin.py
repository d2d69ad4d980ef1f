"""`POST /v1/admin/reload`: serve the index directory's current version without a restart."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request

from app.deps import ADMIN_KEY, get_settings, swap_index
from app.routes import ERRORS
from exemplar.errors import AuthenticationError

router = APIRouter()


@router.post("/v1/admin/reload", responses=ERRORS, tags=["admin"], dependencies=[Depends(ADMIN_KEY)])
async def reload_index(request: Request) -> dict[str, Any]:
    """Serve the index directory's current version (e.g. after `index-builder append`), without a restart.

    The new version is opened on the model thread, between requests; requests already
    running finish on the old one. If it cannot be opened, the old one stays served.
    """
    admin_key_sha256 = get_settings(request).admin_key_sha256
    if admin_key_sha256 is not None:
        given = request.headers.get("x-admin-key", "")
        digest = hashlib.sha256(given.encode()).hexdigest()
        if not hmac.compare_digest(digest, admin_key_sha256.lower()):
            raise AuthenticationError("reloading needs the admin key in the X-Admin-Key header")
    previous, fresh = await swap_index(request.app, "admin reload")
    return {"previous": previous, "index": fresh}
