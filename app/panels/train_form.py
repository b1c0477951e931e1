"""The training form: every field is one dotted override of ``python -m core train``, checked by the typed
config before anything is launched, so a bad value is an ``st.error`` here, not a failed run."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state
from app.plain import plain
from app.readiness import BASES, readiness, train_choice
from core.errors import ConfigError

MAX_EXTRA_CHARS = 20_000
DEVICES = {"auto (GPU if present)": "auto", "CPU": "cpu", "GPU": "gpu"}
# What the held-out cells measure (core/data/designs.py); auto holds out mice for burn/sham data.
DESIGNS = {"auto: held-out mice when each condition has ≥ 2": "auto", "held-out cells (interpolation)": "fraction",
           "held-out mice": "batch", "held-out cell type": "cell_type"}
LOSSES = {"alignment: (1 − cos) + β·| ‖Δz‖ − ‖v_z‖ |": "alignment", "L2: ‖Δz − v_z‖²": "l2"}


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v)


def parse_layer_indices(text: str) -> list[int] | None:
    """"all" (or empty) -> None (every layer); "0, 2,3" -> [0, 2, 3]."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ConfigError(f"layer indices {text!r} are not whole numbers; write e.g. '0,1' or 'all'") \
            from None


def _text(value: str) -> str:
    """A YAML single-quoted string, so a column value like 'yes', '1' or 'null' stays text."""
    return "'" + str(value).replace("'", "''") + "'"


def data_overrides(dataset, mapping: dict | None) -> list[str]:
    """The data keys of the run: the file (or which demo) and the sidebar's column mapping."""
    overrides = []
    if dataset is not None and dataset.train_path:
        overrides.append(f"data.kwargs.path={_text(dataset.train_path)}")
    elif dataset is not None and dataset.kind == "demo":
        overrides.append(f"data.kwargs.dataset={dataset.key.partition(':')[0]}")
    for field in ("embed_key", "pert_col", "control_pert", "cell_type_key", "batch_col", "velocity_key",
                  "confidence_key"):
        value = (mapping or {}).get(field)
        if value is not None:
            overrides.append(f"data.kwargs.{field}={_text(value)}")
    return overrides


def build_overrides(form: dict, dataset, mapping: dict | None) -> list[str]:
    """Form values -> ``key=value`` overrides, in the config's own key names."""
    o: dict[str, object] = {}
    if form["base"] == BASES[0]:
        o["model.init_from"] = "demo"  # core pretrains the demo base on the atlas once, then reuses it
    elif form["base"] == BASES[1]:
        if not form["checkpoint"].strip():
            raise ConfigError("give the path of the base checkpoint (.ckpt), or choose another base model")
        o["model.init_from"] = form["checkpoint"].strip()
    o["model.kwargs.lora.enable"] = form["lora"]
    if form["lora"]:
        o["model.kwargs.lora.r"] = form["lora_r"]
        o["model.kwargs.lora.alpha"] = form["lora_alpha"]
    o["model.kwargs.use_mhc"] = form["mhc"]
    if form["mhc"]:
        o["model.kwargs.mhc.n_streams"] = form["n_streams"]
        o["model.kwargs.mhc.sinkhorn_iters"] = form["sinkhorn_iters"]
        o["model.kwargs.mhc.layer_indices"] = parse_layer_indices(form["layer_indices"])
    o["model.kwargs.use_velocity_alignment"] = form["velocity"]
    if form["velocity"]:
        o["model.kwargs.velocity_lambda"] = form["velocity_lambda"]
        o["model.kwargs.velocity_beta"] = form["velocity_beta"]
        o["model.kwargs.velocity_warmup_steps"] = form["velocity_warmup"]
        o["model.kwargs.velocity_min_confidence"] = form["velocity_min_confidence"]
        o["model.kwargs.velocity_loss"] = LOSSES[form["velocity_loss"]]
    o["training.max_epochs"] = form["epochs"]
    o["training.learning_rate"] = form["learning_rate"]
    o["model.kwargs.cell_set_len"] = form["set_size"]
    o["training.seed"] = form["seed"]
    o["training.accelerator"] = DEVICES[form["device"]]
    design = DESIGNS.get(form.get("design"), "auto")
    designs = [f"data.kwargs.split={design}"]
    if design == "cell_type" and form.get("holdout", "").strip():
        designs.append(f"data.kwargs.holdout={_text(form['holdout'].strip())}")  # a cell type's name stays text
    text = form.get("extra", "")
    if len(text) > MAX_EXTRA_CHARS:  # each line is bounded by the config; the number of lines is bounded here
        raise ConfigError(f"'More settings' holds {len(text):,} characters; at most {MAX_EXTRA_CHARS:,} are accepted")
    extra = [line.strip() for line in text.splitlines() if line.strip()]
    return [f"{k}={_value(v)}" for k, v in o.items()] + designs + data_overrides(dataset, mapping) + extra


def check_overrides(overrides: list[str]):
    """Resolve the overrides with the typed config (unknown keys, wrong types, out-of-range values raise
    ``ConfigError``), exactly as ``python -m core train`` will; then refuse what form text may not choose:
    where the run writes, or files to read outside the data roots (core/data/roots.py). Returns the config."""
    from core.config import load_config
    from core.data.roots import check_app_config

    cfg = load_config(overrides=overrides)
    check_app_config(cfg)
    return cfg


def check_extra_against_data(cfg, choice: dict) -> None:
    """'More settings' may change the set size or the base after the data was checked against the fields
    above: check the data again with what will actually run, so such a launch fails here, not seconds later."""
    from app.readiness import base_embedding, init_from

    set_size, base = cfg.model.kwargs.cell_set_len, cfg.model.init_from or None
    if set_size == choice["set_size"] and base == init_from(choice):
        return
    from app import cache
    from core.errors import DataError

    ref, mapping = state.DATASET.get(), state.MAPPING.get()
    report = cache.validation_report(ref, tuple(sorted(mapping.items())), set_size, base_embedding(base))
    if report.errors:
        raise DataError(f"with the settings under 'More settings' (set size {set_size}, base {base or 'none'}): "
                        f"{report.errors[0]}")


def _data_settings() -> dict:
    """Base model, its checkpoint and the set size: outside the form, because the data is checked against them
    as they change (Launch stays disabled while a check fails), and kept in ``train_choice`` for the Data
    page."""
    choice = train_choice()
    st.markdown("**Base model and set size** (the data set is checked against them)")
    c1, c2, c3 = st.columns([2, 2, 1])
    base = c1.radio("Base model", BASES, index=BASES.index(choice["base"]), key="tf_base")
    checkpoint = c2.text_input("Checkpoint or Arc State folder (server path)", value=choice["checkpoint"],
                               key="tf_ckpt", disabled=base != BASES[1],
                               help="A .ckpt of ours, or an Arc State run folder (config.yaml, var_dims.pkl, "
                                    "pert_onehot_map.pt, checkpoints/), or a .ckpt inside one.")
    set_size = c3.number_input("Set size (cells per set)", 2, 4096, choice["set_size"], key="tf_set")
    choice = {"base": base, "checkpoint": checkpoint, "set_size": int(set_size)}
    state.TRAIN_CHOICE.set(choice)
    if base == BASES[1] and checkpoint.strip():
        arc_base_panel(checkpoint.strip())
    return choice


def arc_base_panel(path: str) -> None:
    """What an Arc State base expects of the data, and its load report (every tensor loaded or dropped)."""
    from app.readiness import arc_base
    from core.errors import UserError

    try:
        arc = arc_base(path)
    except UserError as err:
        st.error(plain(err))
        return
    if arc is None:
        return
    _, info, lines = arc
    st.markdown("**Arc State base**: what it expects of the data")
    expects = {"embedding": f"obsm['{info['embed_key']}'], {info['input_dim']}-d",
               "output space": f"{info['output_space']} ({info['output_dim']}-d"
                               + (f", {info['genes']} genes through its decoder)" if info["genes"] else ")"),
               "control": info["control"], "perturbations it knows": ", ".join(info["perturbations"]),
               "batches it knows": ", ".join(info["batches"]) or "none (no batch encoder)",
               "cells per set": str(info["cell_set_len"])}
    st.dataframe(pd.DataFrame({"expects": list(expects.values())}, index=list(expects)))  # text, not markdown
    st.text(lines[1])  # the load report's summary line; a folder's own strings: text, no markdown
    with st.expander("Load report: every tensor"):
        st.text("\n".join(lines))


def train_form() -> None:
    from core.config import Config
    from core.runs import launch_run, safe_run_name

    defaults = Config()
    m, t = defaults.model.kwargs, defaults.training
    dataset = state.DATASET.get()
    mapping = state.MAPPING.get()
    st.text(f"Data: {dataset.label if dataset else 'none chosen'} (set in the sidebar).")  # text: a file name
    choice = _data_settings()
    base, checkpoint, set_size = choice["base"], choice["checkpoint"], choice["set_size"]
    ready = readiness()
    with st.form("train_form"):
        c1, c2, c3 = st.columns(3)
        with c1:
            st.markdown("**Run**")
            name = st.text_input("Run name", value="st-lora", key="tf_name",
                                 help="Letters, digits, '.', '_' and '-'; a number is added if it is taken.")
            st.markdown("**LoRA**")
            lora = st.toggle("LoRA on the backbone", value=m.lora.enable, key="tf_lora")
            lora_r = st.number_input("Rank r", 1, 256, m.lora.r, key="tf_lora_r")
            lora_alpha = st.number_input("Alpha", 1, 1024, m.lora.alpha, key="tf_lora_alpha")
        with c2:
            st.markdown("**mHC (manifold-constrained hyper-connections)**")
            mhc = st.toggle("mHC in the backbone", value=m.use_mhc, key="tf_mhc")
            n_streams = st.selectbox("Streams n", [2, 4, 8], index=[2, 4, 8].index(m.mhc.n_streams), key="tf_streams")
            sinkhorn_iters = st.number_input("Sinkhorn iterations", 1, 200, m.mhc.sinkhorn_iters, key="tf_sinkhorn")
            layer_indices = st.text_input("Layers to wrap ('all' or e.g. 0,1)", value="all", key="tf_layers")
            st.markdown("**Velocity alignment**")
            velocity = st.toggle("Align Δz with RNA velocity", value=m.use_velocity_alignment, key="tf_velocity")
            velocity_lambda = st.number_input("λ (weight)", 0.0, 100.0, m.velocity_lambda, step=0.05,
                                              format="%.3f", key="tf_vlambda")
            velocity_beta = st.number_input("β (magnitude term)", 0.0, 100.0, m.velocity_beta, step=0.1,
                                            key="tf_vbeta")
        with c3:
            velocity_warmup = st.number_input("Warm-up steps (λ_t ramps 0 → 1)", 0, 100_000,
                                              m.velocity_warmup_steps, key="tf_vwarm")
            velocity_min_confidence = st.number_input("Minimum velocity confidence", 0.0, 1.0,
                                                      m.velocity_min_confidence, step=0.05, key="tf_vconf")
            velocity_loss = st.selectbox("Velocity loss", list(LOSSES), key="tf_vloss")
            st.markdown("**Training**")
            epochs = st.number_input("Epochs", 1, 10_000, t.max_epochs or 5, key="tf_epochs")
            learning_rate = st.number_input("Learning rate", 1e-7, 1.0, t.learning_rate, format="%.1e",
                                            key="tf_lr")
            seed = st.number_input("Seed", 0, 2**31 - 1, t.seed, key="tf_seed")
            device = st.selectbox("Device", list(DEVICES), key="tf_device")
            design = st.selectbox("Held-out design", list(DESIGNS), key="tf_design")
            holdout = st.text_input("Held-out cell type (for that design)", key="tf_holdout")
        extra = st.text_area(
            "More settings (optional): one `key=value` per line, as on the command line", key="tf_extra",
            placeholder="training.batch_size=16\nmodel.kwargs.mhc.dynamic=false\ntraining.max_steps=200",
            help="Any key of the training config, checked before launching: an unknown key is reported with "
                 "the closest valid ones. These apply after the fields above.")
        if not ready.ready:
            st.warning(f"Launch is disabled: {ready.blockers[0]}."
                       + (f" ({len(ready.blockers) - 1} more on the Data page.)" if len(ready.blockers) > 1 else ""))
        submitted = st.form_submit_button("Launch", type="primary", disabled=not ready.ready)
    if not submitted:
        return
    state.MIN_CONFIDENCE.set(float(velocity_min_confidence) if velocity else None)
    form = dict(base=base, checkpoint=checkpoint, lora=lora, lora_r=int(lora_r), lora_alpha=int(lora_alpha),
                mhc=mhc, n_streams=int(n_streams), sinkhorn_iters=int(sinkhorn_iters),
                layer_indices=layer_indices,
                velocity=velocity, velocity_lambda=float(velocity_lambda), velocity_beta=float(velocity_beta),
                velocity_warmup=int(velocity_warmup), velocity_min_confidence=float(velocity_min_confidence),
                velocity_loss=velocity_loss, epochs=int(epochs), learning_rate=float(learning_rate),
                set_size=int(set_size), seed=int(seed), device=device, design=design, holdout=holdout,
                extra=extra)
    run_name = safe_run_name(name)
    overrides = build_overrides(form, dataset, mapping) + [f"run.name={run_name}"]
    check_extra_against_data(check_overrides(overrides), choice)
    run_dir = launch_run(overrides, run_name)
    state.SELECTED_RUN.set(run_dir.name)
    st.success(f"Launched **{plain(run_dir.name)}**; it appears below and updates live.")
    if velocity and not (mapping or {}).get("velocity_key"):
        st.info("No velocity key is chosen in the sidebar, so training computes scvelo velocity for this data "
                "set first (cached for later runs).")
