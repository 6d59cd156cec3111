"""Files, and the first bytes of files, from a Hugging Face dataset repo, fetched the way huggingface_hub fetches.

HF_ENDPOINT (a mirror), HF_TOKEN, HF_HUB_OFFLINE and the hub cache apply as they do to the hub client itself:
whole files come through hf_hub_download (its cache, its resumable .incomplete files); a file's first bytes
come through the client's own URL, headers and HTTP session with a Range request and are kept in pgolf's
cache, where a `.partial` file that the next try resumes holds an unfinished one. Every failure ends in a
HubError of one line naming the file, what failed and what to do.
"""

import errno
import glob
import os
from dataclasses import dataclass

from pgolf.datacache import DataError

REVISION = "main"


class HubError(DataError):
    """A download that failed; the message names the file, the cause and the remedy."""


@dataclass
class RemoteFile:
    repo: str
    path: str
    size: int
    commit: str
    etag: str

    @property
    def url(self) -> str:
        return file_url(self.repo, self.path, self.commit)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT + (" (HF_ENDPOINT)" if os.environ.get("HF_ENDPOINT") else "")


def offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def file_url(repo: str, path: str, revision: str = REVISION) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo, path, repo_type="dataset", revision=revision)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def failure(exc: BaseException, what: str) -> HubError:
    """The one-line HubError for an exception raised while fetching `what` (a repo path)."""
    import httpx2
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError) and offline()):
        return HubError(f"HF_HUB_OFFLINE is set and {what} is not in the cache: unset HF_HUB_OFFLINE to download it")
    if isinstance(exc, GatedRepoError) or getattr(getattr(exc, "response", None), "status_code", None) in (401, 403):
        return HubError(f"{endpoint()} refused {what} (not authorized): set HF_TOKEN to a token that may read it")
    if isinstance(exc, (RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)):
        return HubError(f"{what} is not on {endpoint()} (404): check --repo, and HF_ENDPOINT if it names a mirror")
    if isinstance(exc, LocalEntryNotFoundError) or isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException)):
        cause = exc.__cause__ or exc.__context__ if isinstance(exc, LocalEntryNotFoundError) else exc
        reason = f" ({_first_line(cause)})" if cause is not None else ""
        return HubError(f"cannot download {what}: {endpoint()} cannot be reached{reason}; check the network or "
                        "HF_ENDPOINT, or pass --data (or set PGOLF_DATA) to a data folder you have")
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"cannot download {what} from {endpoint()}: {_first_line(exc)}")
    if isinstance(exc, (httpx2.TransportError, httpx2.StreamError)):
        return HubError(f"the download of {what} from {endpoint()} broke off ({_first_line(exc)}): rerun to resume it")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return HubError(f"cannot write {exc.filename or what}: {exc.strerror}; free some space (or set PGOLF_CACHE and "
                        "HF_HOME to a disk that has it) and rerun: the download resumes")
    if isinstance(exc, OSError):
        return HubError(f"cannot download {what}: {exc.strerror or _first_line(exc)}" + (f" ({exc.filename})" if exc.filename else ""))
    return HubError(f"cannot download {what} from {endpoint()}: {_first_line(exc)}")


def remote_file(repo: str, path: str) -> RemoteFile:
    """Size, commit and ETag of a file at the current revision (one HEAD request, the hub client's own)."""
    from huggingface_hub import get_hf_file_metadata

    try:
        meta = get_hf_file_metadata(file_url(repo, path))
    except Exception as exc:  # network and hub errors come in many types; failure() names each
        raise failure(exc, path) from None
    if meta.size is None or not meta.commit_hash or not meta.etag:
        raise HubError(f"{endpoint()} does not answer for {path} like a Hugging Face hub (no size, commit or ETag): "
                       "check HF_ENDPOINT")
    return RemoteFile(repo, path, meta.size, meta.commit_hash, meta.etag)


def download_file(repo: str, path: str) -> str:
    """A whole file, through the hub cache (hf_hub_download): its local path."""
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_download

    if not offline():
        try:  # one HEAD without the client's minute of retries: an unreachable endpoint or a missing file fails now
            get_hf_file_metadata(file_url(repo, path))
        except (httpx2.ConnectError, httpx2.TimeoutException) as exc:
            cached = cached_file(repo, path)
            if cached is None:
                raise failure(exc, path) from None
            return cached  # what the client itself falls back to, after its retries
        except Exception as exc:
            raise failure(exc, path) from None
    try:
        return hf_hub_download(repo_id=repo, filename=path, repo_type="dataset", revision=REVISION)
    except Exception as exc:
        raise failure(exc, path) from None


def cached_file(repo: str, path: str) -> str | None:
    """The whole file from the hub cache, if an earlier download left it there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, path, revision=REVISION, repo_type="dataset")
    return found if isinstance(found, str) else None


def _prefix_name(folder: str, path: str, nbytes: int, etag: str = "*") -> str:
    return os.path.join(folder, f"{path.replace('/', '--')}.first{nbytes}.{etag}")


def cached_prefix(folder: str, path: str, nbytes: int) -> str | None:
    """A finished download of the first `nbytes` of `path` under `folder`, of any version (for offline use)."""
    found = sorted(p for p in glob.glob(_prefix_name(folder, path, nbytes)) if not p.endswith(".partial"))
    return found[-1] if found else None


def prefix_file(folder: str, remote: RemoteFile, nbytes: int) -> str:
    """Where download_prefix keeps the first `nbytes` of this version of the file."""
    return _prefix_name(folder, remote.path, min(nbytes, remote.size), remote.etag[:16])


def download_prefix(remote: RemoteFile, nbytes: int, folder: str, progress: bool = True) -> str:
    """The file's first `nbytes` (all of it if shorter), by Range request, kept under `folder`: its local path.

    The bytes land in `<name>.partial` first; a later call continues it from where it stopped (Range: bytes=N-),
    and the finished file is renamed into place, keyed by the file's ETag so a new version is a new download."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, tqdm

    target = prefix_file(folder, remote, nbytes)
    nbytes = min(nbytes, remote.size)
    if os.path.exists(target):
        return target
    partial = target + ".partial"
    try:
        os.makedirs(folder, exist_ok=True)
        have = os.path.getsize(partial) if os.path.exists(partial) else 0
        if have > nbytes:  # not ours to continue: start over
            os.remove(partial)
            have = 0
        if have < nbytes:
            headers = build_hf_headers()
            headers.update({"Range": f"bytes={have}-{nbytes - 1}", "Accept-Encoding": "identity"})
            with get_session().stream("GET", remote.url, headers=headers, follow_redirects=True) as response, \
                    open(partial, "ab") as out, \
                    tqdm(total=nbytes, initial=have, unit="B", unit_scale=True, desc=os.path.basename(remote.path),
                         disable=not progress) as bar:
                hf_raise_for_status(response)
                skip = have if response.status_code == 200 else 0  # a server that ignores Range sends from byte 0
                for chunk in response.iter_bytes():
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                    chunk = chunk[: nbytes - have]
                    out.write(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
                    if have >= nbytes:
                        break
            if have < nbytes:
                raise HubError(f"the download of {remote.path} from {endpoint()} broke off after {have:,} of "
                               f"{nbytes:,} bytes: rerun to resume it")
        os.replace(partial, target)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) and not exc.filename:
            exc.filename = partial  # a write error names no file by itself
        raise failure(exc, remote.path) from None
    except Exception as exc:
        raise failure(exc, remote.path) from None
    return target
