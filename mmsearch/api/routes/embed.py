"""Raw embeddings of a text, an image or a sound, for systems that keep their own vectors."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from mmsearch.api.bodies import body_schemas, read_body, validate
from mmsearch.api.deps import ServiceDep, require_audio
from mmsearch.api.errors import ERRORS
from mmsearch.api.schemas import EmbeddingOut, EmbeddingsOut, EmbedForm, EmbedRequest
from mmsearch.errors import BadInput

router = APIRouter(tags=["embed"])


@router.post("/embed", response_model=EmbeddingOut | EmbeddingsOut, responses=ERRORS, summary="Embed",
             openapi_extra=body_schemas("EmbedRequest", "EmbedForm"))
async def embed(request: Request, service: ServiceDep) -> EmbeddingOut | EmbeddingsOut:
    """The raw unit vector of a text (JSON or form), an image or an audio file (form), for
    other systems; `texts` (JSON, up to 256) embeds a list at once and answers `vectors`. Text is
    embedded in `space` clip (to compare with images) or clap (sounds)."""
    fields, files = await read_body(request, ("image", "audio"), (), service.settings.max_upload_bytes)
    if files:
        form = validate(EmbedForm, {**fields, **files})
        if len(files) + (form.text is not None) != 1:
            raise BadInput("embed takes exactly one of text, an image or an audio file")
        if form.space is not None:
            raise BadInput("space applies to text only: images are CLIP, sounds are CLAP")
        text, texts, space = None, None, None
    else:
        req = validate(EmbedRequest, fields)
        text, texts, space = req.text, req.texts, req.space
    image, audio = files.get("image"), files.get("audio")
    if audio is not None or space == "clap":
        require_audio(service, "embedding in the clap space")

    def run() -> EmbeddingOut | EmbeddingsOut:
        engine = service.engine()
        if texts is not None:
            return EmbeddingsOut(**engine.embed(texts=texts, space=space).model_dump())
        return EmbeddingOut(**engine.embed(text=text, image=image, audio=audio, space=space).model_dump())

    return await run_in_threadpool(run)
