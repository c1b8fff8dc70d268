"""The kiosk's settings: one JSON file, validated on load, and salvaged field by field when damaged.

An unattended kiosk restarted on failure must come up despite a typo in its file, and must never
lose a PIN an operator meant to set; that is this module's whole concern, together with the
defaults the file falls back to (its path, the outbox, the scale presets, a batch size sized from
free memory).
"""

from __future__ import annotations

import difflib
import hmac
import json
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from cellview.analysis.classifier import DEVICES, TTA_MODES
from cellview.analysis.model_lookup import DEFAULT_MODEL
from cellview.analysis.model_spec import PRECISIONS, ModelSpec
from cellview.analysis.results import AnalysisParams
from cellview.analysis.stain import STAIN_METHODS
from cellview.base.errors import CellviewError
from cellview.base.files import atomic_write_text
from cellview.outputs.export import FORMATS

SETTINGS_FILE = "kiosk.json"

SCALE_PRESETS = (("40×", 0.25), ("20×", 0.5), ("10×", 1.0))
"""The kiosk's scale entry for a slide that does not say its pixel size: objective → µm per pixel
(typical scanner values; an exact figure can be typed in, or set once as ``mpp_um`` in kiosk.json)."""

_MODIFIERS = ("Ctrl", "Alt", "Shift", "Meta")
_NAMED_KEYS = {"Esc", "Escape", "Backspace", "Delete", "Del", "Home", "End", "Insert", "Pause", "Space",
               "Tab", "Return", "Enter", "PgUp", "PgDown", "Up", "Down", "Left", "Right"}


class KioskSettingsError(CellviewError):
    """The kiosk settings file is missing, unreadable or holds an invalid value."""


# ----------------------------------------------------------------------------- settings


def default_settings_path() -> Path:
    """``kiosk.json`` in the per-user config dir (``~/.config/cellview`` on Linux)."""
    return Path(platformdirs.user_config_dir("cellview")) / SETTINGS_FILE


def default_outbox_dir() -> Path:
    """Where results go when the settings name no outbox (``~/.local/share/cellview/outbox`` on Linux)."""
    return Path(platformdirs.user_data_dir("cellview")) / "outbox"


def normalize_chord(chord: str) -> str:
    """Canonical ``Ctrl+Alt+Shift+Meta+Key`` form (Qt's QKeySequence syntax).

    At least two modifiers are required so that no single accidental press (or a passer-by
    leaning on the keyboard) can close the kiosk.
    """
    parts = [p.strip() for p in str(chord).split("+")]
    if any(not p for p in parts):
        raise KioskSettingsError(f"Exit key chord {chord!r} is malformed; write it like 'Ctrl+Alt+Shift+Q'.")
    aliases = {"control": "Ctrl", "ctrl": "Ctrl", "alt": "Alt", "shift": "Shift", "meta": "Meta",
               "super": "Meta", "win": "Meta", "cmd": "Meta"}
    mods: list[str] = []
    keys: list[str] = []
    for p in parts:
        mod = aliases.get(p.lower())
        if mod:
            if mod in mods:
                raise KioskSettingsError(f"Exit key chord {chord!r} repeats {mod}.")
            mods.append(mod)
        else:
            keys.append(p)
    if len(keys) != 1:
        raise KioskSettingsError(f"Exit key chord {chord!r} must name exactly one key besides the modifiers.")
    key = keys[0]
    if len(key) == 1 and key.isascii() and key.isalnum():
        key = key.upper()
    elif re.fullmatch(r"[Ff]([1-9]|[12][0-9]|3[0-5])", key):
        key = key.upper()
    elif key.capitalize() in _NAMED_KEYS or key in _NAMED_KEYS:
        key = key if key in _NAMED_KEYS else key.capitalize()
    else:
        raise KioskSettingsError(f"Exit key chord {chord!r}: unknown key {key!r} (use a letter, a digit or F1–F35).")
    if len(mods) < 2:
        raise KioskSettingsError(f"Exit key chord {chord!r} needs at least two modifiers (e.g. Ctrl+Alt+{key}) "
                                 "so it cannot be pressed by accident.")
    return "+".join([m for m in _MODIFIERS if m in mods] + [key])


@dataclass(frozen=True)
class KioskSettings:
    """Everything an unattended kiosk needs, read from one JSON file; validated on creation.

    ``None`` for ``watch_dir`` means no watch folder (cases are opened by hand); for
    ``outbox_dir`` it means :func:`default_outbox_dir`; for ``pin`` that the chord alone exits.
    ``idle_s`` = 0 turns the idle screen off. ``settle_s`` is how long a dropped file's size and
    modification time must stay unchanged before it is opened.
    """

    watch_dir: Path | None = None
    outbox_dir: Path | None = None
    model: str = DEFAULT_MODEL
    device: str = "auto"
    idle_s: float = 300.0
    exit_chord: str = "Ctrl+Alt+Shift+Q"
    pin: str | None = None
    batch_size: int | str = "auto"
    workers: int = 2
    formats: tuple[str, ...] = FORMATS
    recent_cases_max: int = 20
    settle_s: float = 5.0
    poll_s: float = 2.0
    png_size_px: int = 2048
    regions: bool = True
    region_confidence: float = 0.5
    tissue_threshold: float = 0.25
    mpp_um: float | None = None
    stain_normalize: str = "none"
    tta: str = "none"
    precision: str = "auto"  # model.PRECISIONS: the validated INT8 copy on a CPU, FP16 on a GPU, or as named

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> KioskSettingsError:
            return KioskSettingsError(f"Kiosk setting {key!r} {why}.", f"value: {getattr(self, key)!r}")

        for key in ("watch_dir", "outbox_dir"):
            value = getattr(self, key)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                    raise bad(key, "must be a folder path")
                object.__setattr__(self, key, Path(os.path.expandvars(os.path.expanduser(str(value)))))
        if not isinstance(self.model, str) or not self.model.strip():
            raise bad("model", "must be a model name or a path to an .onnx file")
        if self.device not in DEVICES:
            raise bad("device", f"must be one of {', '.join(DEVICES)}")
        for key, low in (("idle_s", 0.0), ("settle_s", 0.05), ("poll_s", 0.05)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
                raise bad(key, f"must be a number of seconds ≥ {low:g}")
            object.__setattr__(self, key, float(value))
        if not isinstance(self.exit_chord, str):
            raise bad("exit_chord", "must be text like 'Ctrl+Alt+Shift+Q'")
        object.__setattr__(self, "exit_chord", normalize_chord(self.exit_chord))
        if self.pin is not None:
            if isinstance(self.pin, int) and not isinstance(self.pin, bool):
                raise bad("pin", "must be written in quotes (a leading zero would be lost otherwise)")
            if not isinstance(self.pin, str) or not re.fullmatch(r"[0-9]{4,12}", self.pin):
                raise bad("pin", "must be 4 to 12 digits, in quotes")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                          or not 1 <= self.batch_size <= 1024):
            raise bad("batch_size", 'must be "auto" or a whole number from 1 to 1024')
        for key, low, high in (("workers", 1, 32), ("recent_cases_max", 1, 1000), ("png_size_px", 256, 16384)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise bad(key, f"must be a whole number from {low} to {high}")
        formats = self.formats
        if isinstance(formats, str) or not isinstance(formats, (list, tuple)) or not formats:
            raise bad("formats", f"must be a list drawn from {', '.join(FORMATS)}")
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise bad("formats", f"has unknown format(s) {', '.join(map(str, unknown))}; choose from {', '.join(FORMATS)}")
        # Metadata is always written: it is written last, so its presence marks a complete case.
        object.__setattr__(self, "formats", tuple(f for f in FORMATS if f in set(formats) | {"json"}))
        if not isinstance(self.regions, bool):
            raise bad("regions", "must be true or false")
        for key in ("region_confidence", "tissue_threshold"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise bad(key, "must be a number from 0 to 1")
            object.__setattr__(self, key, float(value))
        if self.mpp_um is not None and (isinstance(self.mpp_um, bool) or not isinstance(self.mpp_um, (int, float))
                                        or not 0.02 <= self.mpp_um <= 50):
            raise bad("mpp_um", "must be a pixel size in µm from 0.02 to 50, or null")
        if self.stain_normalize not in STAIN_METHODS:
            raise bad("stain_normalize", f"must be one of {', '.join(map(repr, STAIN_METHODS))}")
        if self.tta not in TTA_MODES:
            raise bad("tta", f"must be one of {', '.join(map(repr, TTA_MODES))}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(map(repr, PRECISIONS))}")
        if self.watch_dir is not None:
            watch = self.watch_dir.resolve()
            outbox = self.outbox().resolve()
            if outbox == watch or watch in outbox.parents:
                raise KioskSettingsError(
                    "The outbox must not be the watch folder or inside it: the kiosk would analyse its own PNG exports.",
                    f"watch_dir: {self.watch_dir}, outbox_dir: {self.outbox()}",
                )

    # -- derived -----------------------------------------------------------------------------

    def outbox(self) -> Path:
        """The outbox folder, the default one when the settings name none."""
        return self.outbox_dir if self.outbox_dir is not None else default_outbox_dir()

    def check_pin(self, entered: str) -> bool:
        """True when no PIN is set or ``entered`` matches (constant-time compare)."""
        if self.pin is None:
            return True
        return hmac.compare_digest(self.pin.encode(), str(entered).strip().encode())

    def analysis_params(self, tile_px: int, available_bytes: int | None = None,
                        mpp_um: float | None = None) -> AnalysisParams:
        """Run parameters for one case; ``batch_size: "auto"`` is sized from free memory now; ``mpp_um``:
        the pixel size chosen on screen for this case (else the settings')."""
        batch = self.batch_size if isinstance(self.batch_size, int) else choose_batch_size(tile_px, available_bytes)
        return AnalysisParams(tissue_threshold=self.tissue_threshold, mpp_um=mpp_um or self.mpp_um, batch_size=batch,
                              workers=self.workers, device=self.device, stain_normalize=self.stain_normalize,
                              tta=self.tta, precision=self.precision)

    def for_model(self, spec: ModelSpec, where: str = "") -> tuple[KioskSettings, tuple[KioskSettingsError, ...]]:
        """These settings as the loaded model can run them, and what had to be dropped for it.

        Stain normalisation needs the model's stored reference stain; without one every case would
        fail, so the setting is dropped like any other invalid value (the problem names ``where``,
        the settings file, and the key) and cases run without it.
        """
        if self.stain_normalize == "none" or spec.stain_reference is not None:
            return self, ()
        problem = KioskSettingsError(
            f"{where}Kiosk setting 'stain_normalize' ({self.stain_normalize!r}) needs a model that stores the "
            f"reference stain of its training data; the model {spec.name} does not. Ignored: cases run without "
            "stain normalisation.", f"model: {spec.onnx_path}")
        return replace(self, stain_normalize="none"), (problem,)

    # -- file --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("watch_dir", "outbox_dir"):
            data[key] = None if data[key] is None else str(data[key])
        data["formats"] = list(self.formats)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path | None = None) -> KioskSettings:
        """Settings from parsed JSON; unknown keys are an error (a mistyped ``pin`` must not pass silently).

        Relative folder paths are taken relative to ``base_dir`` (the settings file's folder).
        """
        if not isinstance(data, dict):
            raise KioskSettingsError("The kiosk settings must be a JSON object ({...}).")
        known = _setting_names()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise KioskSettingsError(f"Unknown kiosk setting(s): {', '.join(map(_unknown_key_hint, unknown))}.",
                                     f"known settings: {', '.join(known)}")
        values = dict(data)
        for key in ("watch_dir", "outbox_dir"):
            value = values.get(key)
            if isinstance(value, str) and value.strip() and base_dir is not None:
                path = Path(os.path.expandvars(os.path.expanduser(value)))
                values[key] = path if path.is_absolute() else base_dir / path
        if isinstance(values.get("formats"), list):
            values["formats"] = tuple(values["formats"])
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> KioskSettings:
        """Read the settings file; the default file may be absent (defaults), a named one may not."""
        file = Path(path) if path is not None else default_settings_path()
        data = _read_settings_json(file, explicit=path is not None)
        if data is None:
            return cls()
        try:
            return cls.from_dict(data, base_dir=file.resolve().parent)
        except KioskSettingsError as exc:
            raise KioskSettingsError(f"{file}: {exc.message}", exc.details) from exc
        except TypeError as exc:
            raise KioskSettingsError(f"{file}: invalid kiosk settings.", str(exc)) from exc

    @classmethod
    def load_lenient(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> SalvagedSettings:
        """:meth:`load` plus command-line overrides, never raising: every valid setting is kept, the rest reported.

        An unattended kiosk restarted on failure must come up despite a typo in its file (else it
        restart-loops on a blank screen), so keys are accepted one at a time in file order and a
        rejected key keeps its default; a file that cannot be read or parsed gives the defaults.
        Command-line ``overrides`` (``None`` = not given) are applied the same way. The result
        passes the same checks as :meth:`load`, the outbox-inside-watch-folder one included.
        Fails closed: when a configured PIN may have been lost (a file that cannot be read or parsed,
        an invalid or misspelt ``pin``), ``exit_locked`` is set; a named file that does not exist holds
        no PIN, so the defaults apply (and the problem says so).
        """
        file = Path(path) if path is not None else default_settings_path()
        problems: list[KioskSettingsError] = []
        if path is not None and not file.exists():  # nothing there to lose a PIN from: the defaults apply
            missing = KioskSettingsError(f"Kiosk settings file {file} does not exist; the defaults apply.",
                                         f"the default settings file is {default_settings_path()}")
            return cls._with_lenient_overrides(cls(), [missing], False, file, overrides)
        try:
            data = _read_settings_json(file, explicit=path is not None)
        except KioskSettingsError as exc:
            problem = KioskSettingsError(f"{exc.message} None of its settings were used; the defaults apply.",
                                         exc.details)
            return cls._with_lenient_overrides(cls(), [problem], True, file, overrides)
        if data is None:
            return cls._with_lenient_overrides(cls(), [], False, file, overrides)
        if not isinstance(data, dict):
            problem = KioskSettingsError(f"{file}: the kiosk settings must be a JSON object ({{...}}). "
                                         "None of its settings were used; the defaults apply.")
            return cls._with_lenient_overrides(cls(), [problem], True, file, overrides)
        known = _setting_names()
        base_dir = file.resolve().parent
        accepted: dict[str, Any] = {}
        exit_locked = False
        for key, value in data.items():
            if key not in known:
                problems.append(KioskSettingsError(f"{file}: Unknown setting {_unknown_key_hint(key)} was ignored.",
                                                   f"known settings: {', '.join(known)}"))
                exit_locked |= _may_be_a_pin(key)  # a mistyped "pin" must not leave the chord alone to exit
                continue
            try:
                cls.from_dict({**accepted, key: value}, base_dir=base_dir)
            except _SETTING_ERRORS as exc:
                problems.append(_dropped(f"{file}: ", key, exc, "its default applies"))
                exit_locked |= key == "pin"
                continue
            accepted[key] = value
        return cls._with_lenient_overrides(cls.from_dict(accepted, base_dir=base_dir), problems, exit_locked,
                                           file, overrides)

    @staticmethod
    def _with_lenient_overrides(settings: KioskSettings, problems: list[KioskSettingsError], exit_locked: bool,
                                file: Path, overrides: dict[str, Any]) -> SalvagedSettings:
        """Apply command-line values one at a time; a rejected one is reported and the file's value kept."""
        for key, value in overrides.items():
            if value is None:
                continue
            try:
                settings = replace(settings, **{key: value})
            except _SETTING_ERRORS as exc:
                problems.append(_dropped("Command line: ", key, exc, "the settings file's value applies"))
        return SalvagedSettings(settings, tuple(problems), exit_locked, file)

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the settings as indented JSON (atomically); returns the file written."""
        file = Path(path) if path is not None else default_settings_path()
        atomic_write_text(file, json.dumps(self.to_dict(), indent=2) + "\n")
        return file


@dataclass(frozen=True)
class SalvagedSettings:
    """What :meth:`KioskSettings.load_lenient` kept, what it dropped, and whether exit must stay locked.

    ``exit_locked``: a PIN may have been configured but cannot be used (the file could not be
    read or parsed, or its ``pin`` is invalid or misspelt). The kiosk then refuses the exit chord
    instead of letting it close the kiosk without the PIN that the operator meant to set.
    """

    settings: KioskSettings
    problems: tuple[KioskSettingsError, ...] = ()
    exit_locked: bool = False
    path: Path | None = None


# Anything a bad value can raise while the settings are built (a path with a NUL byte: ValueError).
_SETTING_ERRORS = (KioskSettingsError, TypeError, ValueError, OSError, RuntimeError)


def _setting_names() -> list[str]:
    return [f.name for f in fields(KioskSettings)]


def _unknown_key_hint(key: str) -> str:
    close = difflib.get_close_matches(key, _setting_names(), n=1)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _may_be_a_pin(key: str) -> bool:
    """An unknown key that was probably meant as ``pin`` ("pim", "PIN", "exit_pin")."""
    lower = key.lower()
    return "pin" in lower or difflib.get_close_matches(lower, _setting_names(), n=1) == ["pin"]


def _dropped(where: str, key: str, exc: Exception, fallback: str) -> KioskSettingsError:
    """One rejected setting as a problem that names its source and key; never echoes a PIN."""
    if isinstance(exc, KioskSettingsError):
        message, details = exc.message, exc.details
    else:
        message, details = f"Kiosk setting {key!r} is invalid.", str(exc)
    if key == "pin":
        return KioskSettingsError(f"{where}{message} The PIN was ignored: leaving the kiosk is disabled until "
                                  "it is fixed.")
    ignored = "Ignored" if repr(key) in message else f"Setting {key!r} was ignored"  # say the key once
    return KioskSettingsError(f"{where}{message} {ignored}; {fallback}.", details)


def _read_settings_json(file: Path, explicit: bool) -> Any:
    """The parsed settings file; None when the default file is absent (a named file must exist)."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        if explicit:
            raise KioskSettingsError(f"Kiosk settings file {file} does not exist.") from exc
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KioskSettingsError(f"Cannot read kiosk settings file {file}.", str(exc)) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KioskSettingsError(f"Kiosk settings file {file} is not valid JSON "
                                 f"(line {exc.lineno}, column {exc.colno}: {exc.msg}).") from exc


# ----------------------------------------------------------------------------- memory


# Bytes of working memory per tile per input pixel: float32 RGB input (12 B/px) times ~64 for a
# small CNN's intermediate activations and ONNX Runtime / TensorRT workspace (EfficientNet-lite0:
# ~38 MB per 224-px tile), plus the uint8 read buffers (3 B/px, ×4 for the reader queue).
_BYTES_PER_PIXEL = 12 * 64 + 3 * 4
_MEMORY_FRACTION = 0.25  # the rest stays for the OS, the viewer's tile cache and other processes
_FALLBACK_BATCH = 16


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable from /proc/meminfo (on a Jetson the GPU shares this memory), else None."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def choose_batch_size(tile_px: int, available_bytes: int | None = None, max_batch: int = 64) -> int:
    """Largest power of two ≤ ``max_batch`` whose estimated working set fits a quarter of free memory.

    Rule: batch = floor(0.25 × MemAvailable / (tile_px² × 780 B)), rounded down to a power of two
    (fewer distinct shapes for TensorRT's engine profiles), clamped to 1..64. Examples at 224 px
    (39 MB per tile): 2 GB free → 8, 6 GB free → 32, ≥ 11 GB free → 64. When free memory is
    unknown (not Linux, no sysconf) the batch is 16.
    """
    if available_bytes is None:
        available_bytes = mem_available_bytes()
    if available_bytes is None:
        return min(_FALLBACK_BATCH, max_batch)
    per_tile = max(1, int(tile_px)) ** 2 * _BYTES_PER_PIXEL
    fits = int(available_bytes * _MEMORY_FRACTION // per_tile)
    batch = 1
    while batch * 2 <= min(fits, max_batch):
        batch *= 2
    return max(1, min(batch, max_batch))
