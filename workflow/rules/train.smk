# Stage 2: one training run per configuration of the ablation grid (GPU when present).


rule train:
    input:
        unpack(train_inputs),
    output:
        best=result("train/{run}/best.pt"),
        last=result("train/{run}/last.pt"),
        metrics=result("train/{run}/metrics.csv"),
        convergence=result("train/{run}/convergence.json"),
        bundle=result("train/{run}/bundle.pt"),
    log:
        log_path("train/{run}"),
    benchmark:
        benchmark_path("train/{run}")
    conda:
        ENV
    threads: max(1, TRAIN_SETTINGS.workers)
    resources:
        gpu=config["resources"]["train"]["gpu"],
        mem_mb=config["resources"]["train"]["mem_mb"],
        runtime=config["resources"]["train"]["runtime"],
    params:
        out_dir=output_dir,
        pca=pca_flag,
        settings=TRAIN_SETTINGS.flags(),
        launcher=train_launcher,
    shell:
        "{params.launcher} train --run-id {wildcards.run} --train-cache {input.train:q}"
        " --val-cache {input.val:q} --text {input.text:q} {params.pca}"
        " --out-dir {params.out_dir:q} {params.settings} > {log:q} 2>&1"
