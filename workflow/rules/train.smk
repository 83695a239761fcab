# Stage 2: one training run per configuration of the ablation grid (GPU when present).
# Crash safety (docs/training.md, "Resume in the workflow"): the run's state, last.pt and
# resume_best.pt (a hard link of best.pt), is not a declared output, so Snakemake never
# deletes it; every job passes --resume auto and continues from it when it matches the run
# (a rerun after a kill, a retry or a requeued cluster job loses at most one epoch). `exec`
# makes rsis train Snakemake's own child, so it ends with Snakemake (PR_SET_PDEATHSIG).


rule train:
    input:
        unpack(train_inputs),
    output:
        best=result(f"train/{RUN_DIR}/best.pt"),
        metrics=result(f"train/{RUN_DIR}/metrics.csv"),
        convergence=result(f"train/{RUN_DIR}/convergence.json"),
        bundle=result(f"train/{RUN_DIR}/bundle.pt"),
    log:
        log_path(f"train/{RUN_DIR}"),
    benchmark:
        benchmark_path(f"train/{RUN_DIR}")
    conda:
        ENV
    threads: job_cpus(RESOURCES["train"]["cpus"] * TRAIN_PROCESSES)
    resources:
        gpu=RESOURCES["train"]["gpu"],
        nodes=1,  # torchrun --standalone: all of a job's GPUs on one node
        mem_mb=per_attempt("train", "mem_mb"),
        runtime=per_attempt("train", "runtime"),
    params:
        out_dir=output_dir,
        pca=pca_flag,
        features=features_flag_pair,
        settings=train_settings_flags,
        launcher=train_launcher,
        device=DEVICE["train"],
    shell:
        "exec {params.launcher} train --run-id {wildcards.run} --train-cache {input.train:q}"
        " --val-cache {input.val:q} --text {input.text:q} {params.pca} {params.features}"
        " --out-dir {params.out_dir:q} {params.settings} --device {params.device}"
        " --cpus {threads} --resume auto"
        " > {log:q} 2>&1"
