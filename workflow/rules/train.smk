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
    threads: max(1, SETTING["workers"])
    resources:
        gpu=config["resources"]["train"]["gpu"],
        mem_mb=config["resources"]["train"]["mem_mb"],
        runtime=config["resources"]["train"]["runtime"],
    params:
        flags=train_flags,
        out_dir=output_dir,
        backbone=SETTING["backbone"],
        weights=SETTING["weights"],
        hidden=SETTING["hidden"],
        lr=SETTING["lr"],
        encoder_lr=SETTING["encoder_lr"],
        weight_decay=SETTING["weight_decay"],
        epochs=SETTING["epochs"],
        steps=steps_flag(),
        patience=SETTING["patience"],
        max_referents=SETTING["max_referents"],
        workers=SETTING["workers"],
        seed=config["seed"],
        launcher=train_launcher,
    shell:
        "{params.launcher} train --train-cache {input.train:q} --val-cache {input.val:q}"
        " --text {input.text:q} --out-dir {params.out_dir:q} {params.flags}"
        " --backbone {params.backbone} --weights {params.weights:q} --hidden {params.hidden}"
        " --lr {params.lr} --encoder-lr {params.encoder_lr}"
        " --weight-decay {params.weight_decay} --epochs {params.epochs} {params.steps}"
        " --patience {params.patience} --max-referents {params.max_referents}"
        " --workers {params.workers} --seed {params.seed} > {log:q} 2>&1"
