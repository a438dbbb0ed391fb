"""`client.models`: the models the service answers with (its base models and this key's fine-tunes)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from .. import _http
from .._inference import Model, ModelDeleted

__all__ = ["Models"]


def _model_path(model_id: str) -> str:
    """A model id as the tail of ``/v1/models/{model:path}``: ``/`` and ``:`` stay literal (fine-tunes are
    ``ft:org/base:key:suffix:job``), anything unsafe in a path is percent-encoded, and a ``.``/``..``
    segment is encoded too (an HTTP client would otherwise resolve it away)."""
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"Expected a non-empty model id, got {model_id!r}")
    segments = quote(model_id, safe="/:").split("/")
    return "/".join(s.replace(".", "%2E") if s in (".", "..") else s for s in segments)


class Models:
    """The models ``client.chat.completions`` / ``client.completions`` answer with. Reached as
    ``client.models``."""

    def __init__(self, transport: _http.Transport) -> None:
        self._t = transport

    def list(self) -> list[Model]:
        """Every model this key can use: the service's base models (``owned_by="system"``) and the key's
        fine-tunes (``parent`` set), in one list (not paginated).

        Returns:
            A list of `Model`.

        Example:
            >>> [(m.id, m.parent) for m in client.models.list()]
            [('tiny-llama', None), ('ft:tiny-llama:key_ab12:demo:ftjob-abc', 'tiny-llama')]
        """
        body = self._t.request("GET", "/v1/models")
        data = body.get("data") if isinstance(body, Mapping) else None
        return [Model.from_dict(m) for m in data or [] if isinstance(m, Mapping)]

    def retrieve(self, model_id: str) -> Model:
        """One model.

        Args:
            model_id: a base model's name or a fine-tune's id (``ft:...``; ``/`` and ``:`` are fine).

        Returns:
            The `Model`; ``parent`` is a fine-tune's base model.

        Raises:
            NotFoundError: no such model for this key (code ``model_not_found``).

        Example:
            >>> client.models.retrieve(job.fine_tuned_model).parent
            'tiny-llama'
        """
        return Model.from_dict(self._t.request("GET", f"/v1/models/{_model_path(model_id)}"))

    def delete(self, model_id: str) -> ModelDeleted:
        """Delete a fine-tune: it is no longer served or listed (its job stays).

        Args:
            model_id: the fine-tune's id.

        Returns:
            ``ModelDeleted(id=..., deleted=True)``.

        Raises:
            PermissionDeniedError: a base model (code ``model_not_deletable``).
            NotFoundError: no such model for this key (code ``model_not_found``).

        Example:
            >>> client.models.delete(job.fine_tuned_model).deleted
            True
        """
        return ModelDeleted.from_dict(self._t.request("DELETE", f"/v1/models/{_model_path(model_id)}"))
