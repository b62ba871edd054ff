"""Hypothesis strategies for PlanRun manifests as users (and their tooling) might write them.

`planrun_cases()` draws a `Case`: a manifest (without metadata.name, which the test assigns), the
path it reaches the apiserver by (client-side `kubectl apply` of YAML or JSON, `kubectl apply
--server-side`, or the Python client's create) and what the generator knows it did: the spec fields
it made invalid for the CRD schema (`refuse`), whether the plan may run for long (`long_risk`: such
runs always carry a short timeoutSeconds or a state that cancels them), whether the parameters are
of a valid shape and bounded (`valid`: the run must succeed), and where the manifest has nulls that
client-side apply removes.

The plans, devices and beamline are those of the simulated beamline the integration tests run
(tests/helpers/worker_process.py sim_config: examples/plans, examples/devices and bluesky.plans'
count, scan, rel_scan and grid_scan)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from kubesky_operator.api import GROUP, VERSION
from kubesky_operator.api.planrun import RESERVED_START_KEYS

BEAMLINE = "sim"  # the one Beamline the fuzz test creates
DETECTORS = ("det", "fast_det")
AREA_DETECTOR = "blob_det"  # writes HDF5 frames: slower, drawn less often
MOTORS = ("x", "y")
DEVICES = (*DETECTORS, AREA_DETECTOR, *MOTORS)
PLANS = (
    "count",
    "scan",
    "rel_scan",
    "grid_scan",
    "step_scan",
    "count_slowly",
    "move_to",
    "failing_plan",
    "line_scan",
)
FAILING_PLANS = {"failing_plan"}  # valid parameters, but the plan raises: Failed, PlanFailed

# Paths a manifest takes to the apiserver. Client-side apply removes nulls (to it, null means
# "delete this field"); YAML cannot carry lone surrogates, the JSON paths can (decoded as U+FFFD).
APPLY_YAML = "apply-yaml"
APPLY_JSON = "apply-json"
APPLY_SERVER_SIDE = "apply-server-side"
CREATE = "create"
PATHS = (APPLY_YAML, APPLY_JSON, APPLY_SERVER_SIDE, CREATE)
CLIENT_SIDE_APPLY = {APPLY_YAML, APPLY_JSON}

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(repr=False)
class Case:
    path: str
    body: dict[str, Any]
    family: str  # valid | mutated | wild | spec | size
    refuse: frozenset[str] = frozenset()  # spec fields the apiserver must refuse, one of them named
    may_refuse: frozenset[str] = frozenset()  # fields the apiserver may refuse (or take), if so named
    valid: bool = False  # a served plan, parameters of a valid shape, bounded: it must succeed
    long_risk: bool = False  # it might run for long: it carries timeoutSeconds <= 2 (or is cancelled)
    later: str | None = None  # spec.state patched to this once the batch is created...
    later_when: str = "now"  # ... at once, or once the run is "active" (or done, or held)
    unknown: str | None = None  # a spec field the CRD does not declare (refused by kubectl only)
    name_suffix: str = ""  # after the test's unique prefix: names up to 253 characters, dotted
    release: str = "Abort"  # spec.state a run held (Pause, missing Beamline) is patched to, to end it
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> Any:
        return self.body.get("spec")

    def describe(self, limit: int = 600) -> str:
        spec = self.body.get("spec")
        if isinstance(spec, dict):  # the short fields first
            spec = dict(sorted(spec.items(), key=lambda kv: kv[0] in ("params", "metadata")))
        text = json.dumps(spec, ensure_ascii=True, default=str)
        if len(text) > limit:
            text = text[:limit] + f"... ({len(text) - limit} more)"
        extra = f" later={self.later}/{self.later_when}" if self.later else ""
        return f"[{self.path} {self.family}{extra} {' '.join(self.notes)}] spec={text}"

    # Hypothesis prints falsifying batches (dataclasses field by field): keep 400 KB blobs out of it.
    __repr__ = describe

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.describe())

    def via(self, path: str) -> None:
        """Send it by `path`: kubectl asks for strict field validation (an undeclared field is
        refused), the Python client does not (the apiserver prunes it)."""
        self.path = path
        if self.unknown is not None:
            if path == CREATE:
                self.refuse -= {self.unknown}
            else:
                self.refuse |= {self.unknown}

    def request_size(self) -> int:
        """Bytes of the manifest as the JSON a client sends (escaped) or kubectl stores in its
        last-applied annotation (Go escapes <, > and &)."""
        text = json.dumps(self.body, ensure_ascii=False)
        return len(text.encode(errors="surrogatepass")) + 5 * sum(text.count(c) for c in "<>&\u2028\u2029")


# -- scalars -------------------------------------------------------------------------------------

ODD_CHARS = (
    "\x00",  # NUL: JSON carries it as \u0000
    "\u202e",  # right-to-left override
    "\u200f",  # right-to-left mark
    "\u061c",  # Arabic letter mark
    "\u05d0\u05d1",  # Hebrew
    "\u0627\u0644",  # Arabic
    "\ufeff",  # byte order mark
    "\ufffe",
    "\uffff",  # non-characters
    "\U0010ffff",  # the last code point
    "\u0301",  # a combining accent on nothing
    "\U0001f9ea",  # an emoji outside the BMP
    "\u200d",  # zero-width joiner
    "\u2028",  # line separator
    "\x7f",
    "\x1b[31m",  # an ANSI escape
    "\n",
    "\r\n",
    "\t",
    '"',
    "\\",
    "'",
    ": ",
    "# ",
    "- ",
    "{{",
    "${x}",
    "%s",
    "\u00a0",
)
SURROGATES = ("\ud800", "\udfff", "\udbff")
YAML_WORDS = ("y", "n", "yes", "no", "on", "off", "null", "~", "true", "NO", "1e3", "0x1f", "0o17", ".inf")


def texts(surrogates: bool, max_size: int = 12) -> st.SearchStrategy[str]:
    odd = ODD_CHARS + SURROGATES if surrogates else ODD_CHARS
    piece = st.one_of(st.sampled_from(odd), st.characters(codec="utf-8"), st.sampled_from(YAML_WORDS))
    short = st.lists(piece, max_size=max_size).map("".join)
    long = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=3), st.integers(256, 20_000))
    return st.one_of(short, short, short, st.sampled_from(YAML_WORDS), long)


EDGE_INTS = (
    0,
    1,
    -1,
    2**31 - 1,
    -(2**31),
    2**53 + 1,
    INT64_MAX,
    INT64_MIN,
    INT64_MAX + 1,
    INT64_MIN - 1,
    2**64,
    10**30,
    -(10**30),
)
EDGE_FLOATS = (0.0, -0.0, 1e308, -1e308, 5e-324, 1.7976931348623157e308, 2.0, 2.5, 1e-300, 1e18, 0.1)


def numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(EDGE_INTS),
        st.integers(),
        st.sampled_from(EDGE_FLOATS),
        st.floats(allow_nan=False, allow_infinity=False),
    )


RESERVED_AND_ODD_KEYS = (
    "",
    ".",
    "a.b",
    "a/b",
    "/",
    "uid",
    "time",
    "plan_name",
    "scan_id",
    "kubesky",
    "plan_set_hash",
    "__proto__",
    "$ref",
    "\x00",
    " ",
    "n",
    "y",
)


def keys(surrogates: bool) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(RESERVED_AND_ODD_KEYS),
        texts(surrogates, max_size=6),
        st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
    )


def json_values(surrogates: bool, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    # null rarely: client-side apply removes it, and the PlanRun is Rejected before anything else
    scalars = st.one_of(*[numbers(), texts(surrogates)] * 4, st.booleans(), st.none())
    return st.recursive(
        scalars,
        lambda kids: st.one_of(
            st.lists(kids, max_size=4), st.dictionaries(keys(surrogates), kids, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def wild_objects(surrogates: bool) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(keys(surrogates), json_values(surrogates), max_size=5)


def nested(depth: int, leaf: Any = 1) -> Any:
    value: Any = leaf
    for i in range(depth - 1):
        value = {"a": value} if i % 2 else [value]
    return {"deep": value}  # `depth` levels counting the field itself


def sizes() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(what, value) of an object at or past api.limits: nesting, size, many keys."""
    return st.one_of(
        st.integers(2, 40).map(lambda d: (f"depth {d}", nested(d))),
        st.integers(60, 300).map(lambda d: (f"depth {d}", nested(d))),
        st.integers(100_000, 400_000).map(lambda n: (f"{n} bytes", {"blob": "x" * n})),
        st.integers(500, 5_000).map(lambda n: (f"{n} keys", {f"k{i}": i for i in range(n)})),
    )


# -- parameters of the served plans -----------------------------------------------------------


def detector_lists() -> st.SearchStrategy[list[str]]:
    return st.one_of(
        st.lists(st.sampled_from(DETECTORS), min_size=1, max_size=2, unique=True),
        st.just([AREA_DETECTOR]),
    )


SMALL_FLOATS = st.one_of(st.floats(-10, 10, allow_nan=False), st.sampled_from((-0.0, 0.0, 5e-324, 1e-300)))
NUMS = st.integers(1, 3)


def _maybe(draw: Any, params: dict[str, Any], key: str, strategy: st.SearchStrategy[Any]) -> None:
    if draw(st.booleans()):
        params[key] = draw(strategy)


def safe_md() -> st.SearchStrategy[dict[str, Any]]:
    scalars = st.one_of(
        st.integers(INT64_MIN, INT64_MAX),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    )
    names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
        lambda k: k not in RESERVED_START_KEYS
    )
    return st.dictionaries(names, scalars, max_size=3)


@st.composite
def valid_params(draw: Any, plan: str) -> dict[str, Any]:
    """Parameters of a valid shape for `plan` that keep the run short (at most 9 points, no delay
    above 20 ms)."""
    p: dict[str, Any] = {}
    if plan in ("count", "count_slowly", "scan", "rel_scan", "grid_scan", "step_scan"):
        p["detectors"] = draw(detector_lists())
    elif plan == "failing_plan":
        # It triggers its detectors without staging them: the simulated area detector's frame
        # writer is then never opened, and the next run that stages blob_det fails with
        # "open_file not run" (the device's state, not kubesky's).
        p["detectors"] = draw(st.lists(st.sampled_from(DETECTORS), min_size=1, max_size=2, unique=True))
    if plan == "count":
        _maybe(draw, p, "num", NUMS)
        _maybe(draw, p, "delay", st.floats(0, 0.02))
        _maybe(draw, p, "md", safe_md())
    elif plan == "count_slowly":
        p["num"] = draw(NUMS)
        p["delay"] = draw(st.floats(0, 0.02))
    elif plan == "failing_plan":
        _maybe(draw, p, "fail_after", st.integers(0, 2))
    elif plan in ("scan", "rel_scan"):
        form = draw(st.sampled_from(("named", "axes", "args")))
        axis = {
            "motor": draw(st.sampled_from(MOTORS)),
            "start": draw(SMALL_FLOATS),
            "stop": draw(SMALL_FLOATS),
        }
        if form == "named":
            p.update(axis)
        elif form == "axes":
            p["axes"] = [axis]
        else:
            p["args"] = [axis["motor"], axis["start"], axis["stop"]]
        p["num"] = draw(NUMS)
        _maybe(draw, p, "md", safe_md())
    elif plan == "grid_scan":
        motors = draw(st.lists(st.sampled_from(MOTORS), min_size=1, max_size=2, unique=True))
        axes = [
            {"motor": m, "start": draw(SMALL_FLOATS), "stop": draw(SMALL_FLOATS), "num": draw(NUMS)}
            for m in motors
        ]
        if len(axes) == 1 and draw(st.booleans()):
            p.update(axes[0])
        else:
            p["axes"] = axes
        _maybe(draw, p, "snake_axes", st.booleans())
    elif plan in ("step_scan", "line_scan"):
        if plan == "line_scan":
            p["detector"] = draw(st.sampled_from(DETECTORS))
        p["motor"] = draw(st.sampled_from(MOTORS))
        p["start"] = draw(SMALL_FLOATS)
        p["stop"] = draw(SMALL_FLOATS)
        _maybe(draw, p, "num", NUMS)
        _maybe(draw, p, "metadata", safe_md())
    elif plan == "move_to":
        p["motor"] = draw(st.sampled_from(MOTORS))
        p["position"] = draw(SMALL_FLOATS)
    return p


@st.composite
def mutated_params(draw: Any, plan: str, surrogates: bool) -> tuple[dict[str, Any], list[str]]:
    """Valid parameters with one to three things wrong (or merely odd): wrong types, unknown
    parameters, missing ones, devices that do not exist, numbers at the edges, nulls."""
    p = draw(valid_params(plan))
    notes: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        how = draw(
            st.sampled_from(
                ("wild", "unknown", "drop", "device", "number", "null", "float-int", "nested-null", "md")
            )
        )
        known = sorted(p)
        if how == "wild" and known:
            k = draw(st.sampled_from(known))
            p[k] = draw(json_values(surrogates))
        elif how == "unknown":
            p[draw(keys(surrogates))] = draw(json_values(surrogates))
        elif how == "drop" and known:
            del p[draw(st.sampled_from(known))]
        elif how == "device":
            name = draw(
                st.one_of(
                    texts(surrogates, 6), st.sampled_from(("X", "det ", "det.x", "x.user_readback", "RE", ""))
                )
            )
            for k in ("detector", "motor"):
                if k in p:
                    p[k] = name
            if "detectors" in p:
                dets = p["detectors"]
                p["detectors"] = [*dets, name] if isinstance(dets, list) else [name]
            if "args" in p:
                args = p["args"]
                p["args"] = [name, *args[1:]] if isinstance(args, list) else [name, 0, 1]
        elif how == "number":
            k = draw(st.sampled_from(("num", "delay", "fail_after", "start", "stop", "position")))
            p[k] = draw(numbers())
        elif how == "float-int" and "num" in p:
            p["num"] = draw(st.sampled_from((2.0, 2.5, -0.0, 1e308, 1.0, "2", True, [1])))
        elif how == "null":
            k = draw(st.sampled_from((*known, "md", "num", "delay")) if known else st.just("md"))
            p[k] = None
        elif how == "nested-null":
            p["md"] = {"list": [{"null": None, "ok": 1}], "d": {"n": None}}
        elif how == "md":
            p["md" if plan not in ("step_scan", "line_scan") else "metadata"] = draw(wild_objects(surrogates))
        notes.append(how)
    return p, notes


# -- spec fields ---------------------------------------------------------------------------------

VALID_MISSING_BEAMLINES = ("nosuch", "sim2", "a.b-c", "s" * 253, "0", "sim.sim")
INVALID_BEAMLINES = (
    "",
    "Sim",
    "-sim",
    "sim-",
    "sim..x",
    "sim_x",
    "sim ",
    " sim",
    "s\u00edm",
    "s" * 254,
    "sim\n",
    "a/b",
)
UNKNOWN_PLANS = (
    "no_such_plan",
    "Count",
    "_private",
    "bp",
    "bps",
    "__init__",
    "RE",
    "a" * 253,
    "count_",
    "print",
)
INVALID_PLANS = ("", "count()", "1count", "co-unt", "co unt", "c\u00f6unt", "a" * 254, "count\n", "bp.count")
WRONG_TYPES = (1, 0, True, [], ["sim"], {}, {"a": 1}, 1.5)
EXTRA_SPEC_KEYS = ("timeout", "Priority", "paramz", "beamLine", "args", "kwargs", "md", "status")
STATES = ("Run", "Pause", "Stop", "Abort")
INVALID_STATES = ("run", "", "Paused", "Running", "Cancel", "STOP", "Abort ")
BAD_TIMEOUTS = (0, -1, INT64_MIN, INT64_MAX + 1, 2**64, 1.5, 0.5, "5", True, [1])
LONG_TIMEOUTS = (2**31 - 1, 2**53, INT64_MAX, 10**10, 3600)
PRIORITIES_OK = (0, 1, -1, 10, INT64_MAX, INT64_MIN, 2**31, -(2**53), 2.0, -0.0, 100.0)
PRIORITIES_BAD = (INT64_MAX + 1, INT64_MIN - 1, 2**64, 10**30, 1.5, 1e19, 1e308, "10", True, [1], {})
# Integral, but written with an exponent: refused as JSON ("must be of type integer"), taken as YAML
# (server-side apply sends YAML).
PRIORITIES_MAYBE = (1e18, 1e15)


def choice(*weighted: tuple[int, Any]) -> st.SearchStrategy[Any]:
    """One of the values, with integer weights (about: Hypothesis favours the ends of a list, so
    the heaviest value goes at both ends and the rare ones in the middle)."""
    heavy = max(weighted, key=lambda wv: wv[0])
    middle = [v for w, v in weighted if (w, v) != heavy for _ in range(w)]
    half = heavy[0] // 2
    return st.sampled_from([heavy[1]] * half + middle + [heavy[1]] * (heavy[0] - half))


@st.composite
def planrun_cases(draw: Any) -> Case:
    path = draw(st.sampled_from(PATHS))
    sur = path != APPLY_YAML
    spec: dict[str, Any] = {}
    refuse: set[str] = set()
    notes: list[str] = []
    may_refuse: set[str] = set()
    valid = False
    long_risk = False

    # beamline
    how = draw(choice((30, "sim"), (2, "missing"), (2, "invalid"), (1, "type"), (1, "absent")))
    if how == "sim":
        spec["beamline"] = BEAMLINE
    elif how == "missing":
        spec["beamline"] = draw(
            st.one_of(
                st.sampled_from(VALID_MISSING_BEAMLINES),
                st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True).filter(
                    lambda s: s != BEAMLINE
                ),
            )
        )
    elif how == "invalid":
        spec["beamline"] = draw(
            st.one_of(st.sampled_from(INVALID_BEAMLINES), texts(sur).filter(_not_a_k8s_name))
        )
        refuse.add("spec.beamline")
    elif how == "type":
        spec["beamline"] = draw(st.sampled_from(WRONG_TYPES))
        refuse.add("spec.beamline")
    else:
        refuse.add("spec.beamline")
    if how != "absent":
        notes.append(f"beamline:{how}")

    # plan and params
    how = draw(choice((26, "served"), (3, "unknown"), (2, "invalid"), (1, "type"), (1, "absent")))
    plan: Any = None
    if how == "served":
        plan = draw(st.sampled_from(PLANS))
    elif how == "unknown":
        plan = draw(
            st.one_of(
                st.sampled_from(UNKNOWN_PLANS),
                st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True).filter(
                    lambda s: s not in PLANS
                ),
            )
        )
    elif how == "invalid":
        plan = draw(
            st.one_of(
                st.sampled_from(INVALID_PLANS),
                texts(sur).filter(lambda s: not s.isidentifier() or not s.isascii() or len(s) > 253),
            )
        )
        refuse.add("spec.plan")
    elif how == "type":
        plan = draw(st.sampled_from(WRONG_TYPES))
        refuse.add("spec.plan")
    else:
        refuse.add("spec.plan")
    if how != "absent":
        spec["plan"] = plan
    notes.append(f"plan:{how}")

    family = "wild"
    params: Any
    pick = draw(
        choice(
            (12, "mutated"),
            (10, "valid"),
            (4, "wild"),
            (1, "non-object"),
            (1, "null"),
            (1, "absent"),
            (2, "size"),
        )
    )
    if pick in ("valid", "mutated") and plan in PLANS:
        if pick == "valid":
            params = draw(valid_params(plan))
            family, valid = "valid", True
        else:
            params, how_notes = draw(mutated_params(plan, sur))
            notes.extend(how_notes)
            family, long_risk = "mutated", True
    elif pick == "non-object":
        params = draw(st.sampled_from((*WRONG_TYPES[:-3], "params", 1.5)))
        refuse.add("spec.params")
    elif pick == "size":
        what, params = draw(sizes())
        family = "size"
        notes.append(f"params:{what}")
        long_risk = True
    elif pick in ("null", "absent"):
        params = None
        long_risk = True
        if pick == "null":
            may_refuse.add("spec.params")  # server-side apply keeps the null: not an object
    else:
        params = draw(wild_objects(sur))
        long_risk = True
    if pick != "absent":
        spec["params"] = params

    # metadata
    how = draw(
        choice(
            (12, "absent"),
            (3, "empty"),
            (6, "safe"),
            (4, "wild"),
            (1, "reserved"),
            (1, "non-object"),
            (1, "size"),
        )
    )
    if how == "empty":
        spec["metadata"] = {}
    elif how == "safe":
        spec["metadata"] = draw(safe_md())
    elif how == "wild":
        spec["metadata"] = draw(wild_objects(sur))
        valid = False
    elif how == "reserved":
        key = draw(st.sampled_from(sorted(RESERVED_START_KEYS)))
        value = draw(st.one_of(st.sampled_from(("x", 1, 1.5, None, True, [], {})), json_values(sur)))
        spec["metadata"] = {key: value, "ok": 1}
        valid = False
    elif how == "non-object":
        spec["metadata"] = draw(st.sampled_from(("md", 1, [], [{"a": 1}], True)))
        refuse.add("spec.metadata")
    elif how == "size":
        what, spec["metadata"] = draw(sizes())
        notes.append(f"metadata:{what}")
        valid = valid and what.startswith("depth") and int(what.split()[1]) <= 32
    if how != "absent":
        notes.append(f"metadata:{how}")
    metadata = spec.get("metadata")
    if isinstance(metadata, dict) and any(metadata.get(k) is not None for k in RESERVED_START_KEYS):
        # the keys the RunEngine sets are declared fields, refused by type or by rule
        refuse.add("spec.metadata")
    elif isinstance(metadata, dict) and any(k in metadata for k in RESERVED_START_KEYS):
        # a null one: pruned by the apiserver on create, removed by client-side apply, refused as
        # not of the field's type by server-side apply
        may_refuse.add("spec.metadata")

    # priority
    how = draw(choice((12, "absent"), (8, "ok"), (1, "bad"), (1, "null"), (2, "int"), (1, "maybe")))
    if how == "ok":
        spec["priority"] = draw(st.sampled_from(PRIORITIES_OK))
    elif how == "int":
        spec["priority"] = draw(st.integers(INT64_MIN, INT64_MAX))
    elif how == "bad":
        spec["priority"] = draw(st.sampled_from(PRIORITIES_BAD))
        refuse.add("spec.priority")
    elif how == "null":
        spec["priority"] = None
        may_refuse.add("spec.priority")  # server-side apply keeps the null: not of the field's type
    elif how == "maybe":
        spec["priority"] = draw(st.sampled_from(PRIORITIES_MAYBE))
        may_refuse.add("spec.priority")

    # state
    how = draw(
        choice(
            (16, "absent"), (4, "Run"), (2, "Pause"), (1, "Stop"), (1, "Abort"), (1, "invalid"), (1, "null")
        )
    )
    if how in STATES:
        spec["state"] = how
    elif how == "invalid":
        spec["state"] = draw(st.one_of(st.sampled_from(INVALID_STATES), st.sampled_from(WRONG_TYPES)))
        refuse.add("spec.state")
    elif how == "null":
        spec["state"] = None
        may_refuse.add("spec.state")  # server-side apply keeps the null: not of the field's type
    if how != "absent":
        notes.append(f"state:{how}")

    # timeoutSeconds: a run that might last gets a short one, unless the field is refused anyway
    how = draw(choice((14, "absent"), (5, "short"), (3, "long"), (1, "bad"), (1, "null"), (1, "float")))
    if how == "bad":
        spec["timeoutSeconds"] = draw(st.sampled_from(BAD_TIMEOUTS))
        refuse.add("spec.timeoutSeconds")
    elif long_risk or how == "short":
        spec["timeoutSeconds"] = draw(st.integers(1, 2)) if long_risk else draw(st.integers(1, 3))
    elif how == "long":
        spec["timeoutSeconds"] = draw(st.sampled_from(LONG_TIMEOUTS))
    elif how == "null":
        spec["timeoutSeconds"] = None
        may_refuse.add("spec.timeoutSeconds")  # server-side apply keeps the null: not of the field's type
    elif how == "float":
        spec["timeoutSeconds"] = 30.0

    # fields the schema does not declare: refused by kubectl (strict field validation), pruned with
    # a warning by a client that does not ask for validation
    extra = None
    if draw(choice((29, False), (1, True))):
        extra = draw(st.sampled_from(EXTRA_SPEC_KEYS))
        spec[extra] = draw(json_values(sur, max_leaves=3))
        notes.append(f"extra:{extra}")

    body: dict[str, Any] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PlanRun", "metadata": {}}
    roll = draw(choice((98, "object"), (1, "not-an-object"), (1, "absent")))
    if roll == "not-an-object":
        body["spec"] = draw(st.sampled_from((None, [], "spec", 1)))
        refuse = {"spec"}
        notes.append("spec:not-an-object")
    elif roll == "absent":
        refuse = {"spec"}
        notes.append("spec:absent")
    else:
        body["spec"] = spec
    if draw(choice((29, False), (1, True))):
        # the apiserver ignores a status given at creation (status is a subresource)
        body["status"] = {"phase": draw(st.sampled_from(("Succeeded", "Running", "Rejected", "Bogus")))}
        notes.append("status-given")
    later = draw(choice((14, None), (2, "Stop"), (2, "Abort"), (2, "Pause")))
    case = Case(
        path=path,
        body=body,
        family=family,
        refuse=frozenset(refuse),
        may_refuse=frozenset(may_refuse),
        valid=valid and plan in PLANS,
        long_risk=long_risk,
        later=later,
        later_when=draw(st.sampled_from(("now", "active"))),
        name_suffix=draw(choice((8, ""), (1, "." + "a" * 63), (1, "-" + "x" * 250), (1, ".b-c.d0.9"))),
        release=draw(choice((2, "Run"), (1, "Stop"), (1, "Abort"))),
        notes=notes,
    )
    if extra is not None and spec[extra] is not None:
        case.unknown = f"spec.{extra}"
        case.via(path)
    elif extra is not None:  # a null one: client-side apply drops it, the others may refuse it
        case.may_refuse |= {f"spec.{extra}"}
    if path in CLIENT_SIDE_APPLY and case.request_size() > 200_000:
        case.may_refuse |= {"metadata.annotations"}  # kubectl's last-applied over 256 KiB
    return case


def _not_a_k8s_name(s: str) -> bool:
    return (
        not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", s)
        or len(s) > 253
    )


MAX_REQUEST = 1_000_000  # well under the apiserver's 3 MiB request and etcd's 1.5 MiB object limits


def batches(min_size: int = 4, max_size: int = 14) -> st.SearchStrategy[list[Case]]:
    cases = planrun_cases().filter(lambda c: c.request_size() < MAX_REQUEST)
    return st.lists(cases, min_size=min_size, max_size=max_size)
