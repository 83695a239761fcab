# Stage 2: every trained configuration scored on every evaluation split, one job per run
# (the model is loaded once for all splits and expression choices).


rule evaluate:
    input:
        checkpoint=result(f"train/{RUN_DIR}/best.pt"),
        weights=WEIGHTS_FILES,  # a frozen encoder's weights are not in the checkpoint
        caches=expand(result("cache/{split}.h5"), split=EVAL_SPLITS),
        features=features_files(EVAL_SPLITS),
        text=lambda wildcards: text_file(RUNS[wildcards.run]),
        data=dataset_inputs(),
    output:
        expand(
            result("eval/{{run}}/seed{{seed}}/{split}~{expression}.{kind}"),
            split=EVAL_SPLITS,
            expression=EVAL_EXPRESSIONS,
            kind=["json", "csv", "predictions.h5", "predictions.json"],
        ),
    log:
        log_path(f"evaluate/{RUN_DIR}"),
    benchmark:
        benchmark_path(f"evaluate/{RUN_DIR}")
    conda:
        ENV
    threads: job_cpus(RESOURCES["evaluate"]["cpus"])
    resources:
        gpu=RESOURCES["evaluate"]["gpu"],
        mem_mb=per_attempt("evaluate", "mem_mb"),
        runtime=per_attempt("evaluate", "runtime"),
    params:
        out_dir=output_dir,
        expressions=EVAL_EXPRESSIONS,
        seed=config["evaluation"]["seed"],
        # plain values, not a function of `input`: Snakemake leaves such (deriving) functions
        # out of the params trigger, and a protocol or resolution change would rerun nothing
        protocol=config["evaluation"]["protocol"],
        original_size="--original-size" if config["evaluation"]["original_size"] else "",
        root=refs_root,  # a path of the input, which the input trigger watches
        name=DS["name"],
        split_by=DS["splitBy"],
        images=DS["images"],
        features=features_flag("--features", EVAL_SPLITS),
        device=DEVICE["evaluate"],
    shell:
        "rsis evaluate --checkpoint {input.checkpoint:q} --cache {input.caches:q}"
        " {params.features} --text {input.text:q} --expression {params.expressions}"
        " --seed {params.seed} --out-dir {params.out_dir:q} --protocol {params.protocol}"
        " {params.original_size} --refs-root {params.root:q} --dataset {params.name}"
        " --split-by {params.split_by} --images {params.images:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


rule evaluate_inverse_order:
    input:
        checkpoint=result(f"train/{RUN_DIR}/best.pt"),
        weights=WEIGHTS_FILES,
        cache=result("cache/{split}.h5"),
        features=lambda wildcards: features_files([wildcards.split]),
        text=lambda wildcards: text_file(RUNS[wildcards.run]),
    output:
        expand(
            result("eval/{{run}}/seed{{seed}}/{{split}}~first~reverse.{kind}"),
            kind=["json", "csv", "predictions.h5", "predictions.json"],
        ),
    log:
        log_path(f"evaluate/{RUN_DIR}/{{split}}~reverse"),
    benchmark:
        benchmark_path(f"evaluate/{RUN_DIR}/{{split}}~reverse")
    conda:
        ENV
    threads: job_cpus(RESOURCES["evaluate"]["cpus"])
    resources:
        gpu=RESOURCES["evaluate"]["gpu"],
        mem_mb=per_attempt("evaluate", "mem_mb"),
        runtime=per_attempt("evaluate", "runtime"),
    params:
        out_dir=output_dir,
        features=lambda wildcards: features_flag("--features", [wildcards.split]),
        device=DEVICE["evaluate"],
    shell:
        "rsis evaluate --checkpoint {input.checkpoint:q} --cache {input.cache:q}"
        " {params.features} --text {input.text:q} --expression first --order reverse"
        " --out-dir {params.out_dir:q} --device {params.device} --threads {threads}"
        " > {log:q} 2>&1"


if IS_DEMO:

    rule baselines:
        input:
            data=dataset_inputs(),
        output:
            result("tables/baselines.md"),
            result("tables/baselines.csv"),
        log:
            log_path("baselines"),
        benchmark:
            benchmark_path("baselines")
        conda:
            ENV
        params:
            root=refs_root,
            name=DS["name"],
            split_by=DS["splitBy"],
            images=DS["images"],
            splits=EVAL_SPLITS,
            height=SETTING["image_size"][0],
            width=SETTING["image_size"][1],
            out_dir=output_dir,
        shell:
            "rsis baselines --refs-root {params.root:q} --dataset {params.name}"
            " --split-by {params.split_by} --images {params.images:q} --split {params.splits}"
            " --height {params.height} --width {params.width}"
            " --out-dir {params.out_dir:q} > {log:q} 2>&1"
