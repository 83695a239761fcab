# The image encoder: the demo's pretrained stand-in for ImageNet and its probe, and the
# features of a frozen encoder, computed once per split for every run of the grid.

if IS_DEMO:

    rule pretrain_encoder:
        output:
            result("encoder/pretrained.pt"),
        log:
            log_path("encoder/pretrain"),
        benchmark:
            benchmark_path("encoder/pretrain")
        conda:
            ENV
        threads: 2
        params:
            backbone=SETTING["backbone"],
            seed=config["pretrain"]["seed"],
            scenes=config["pretrain"]["scenes"],
            epochs=config["pretrain"]["epochs"],
            batch_size=config["pretrain"]["batch_size"],
            lr=config["pretrain"]["lr"],
            input_height=SETTING["image_size"][0],
            input_width=SETTING["image_size"][1],
            scene=demo_scene_flags(),
        shell:
            "rsis pretrain --out {output:q} --backbone {params.backbone} --seed {params.seed}"
            " --scenes {params.scenes} --epochs {params.epochs} --batch-size {params.batch_size}"
            " --lr {params.lr} --input-height {params.input_height}"
            " --input-width {params.input_width} {params.scene} --threads {threads}"
            " > {log:q} 2>&1"

    rule probe_encoder:
        input:
            result("encoder/pretrained.pt"),
        output:
            result("encoder/probe.json"),
        log:
            log_path("encoder/probe"),
        benchmark:
            benchmark_path("encoder/probe")
        conda:
            ENV
        params:
            backbone=SETTING["backbone"],
            seed=config["pretrain"]["seed"] + 1,
            fit=config["pretrain"]["probe_fit_scenes"],
            test=config["pretrain"]["probe_test_scenes"],
            input_height=SETTING["image_size"][0],
            input_width=SETTING["image_size"][1],
            scene=demo_scene_flags(),
        shell:
            "rsis probe --encoder pretrained={input:q} --encoder random=none"
            " --backbone {params.backbone} --seed {params.seed} --fit-scenes {params.fit}"
            " --test-scenes {params.test} --input-height {params.input_height}"
            " --input-width {params.input_width} {params.scene} --out {output:q} > {log:q} 2>&1"


rule features:
    input:
        cache=result("cache/{split}.h5"),
        weights=WEIGHTS_FILES,
    output:
        result("features/{split}.h5"),
    log:
        log_path("features/{split}"),
    benchmark:
        benchmark_path("features/{split}")
    conda:
        ENV
    # a forward pass over a split, as an evaluation is: the same CPUs, GPU, memory and time
    threads: job_cpus(RESOURCES["evaluate"]["cpus"])
    resources:
        gpu=RESOURCES["evaluate"]["gpu"],
        mem_mb=per_attempt("evaluate", "mem_mb"),
        runtime=per_attempt("evaluate", "runtime"),
    params:
        backbone=SETTING["backbone"],
        weights=weights_arg,
        dtype=config["features"]["dtype"],
        device=DEVICE["evaluate"],
    shell:
        "rsis features --cache {input.cache:q} --backbone {params.backbone}"
        " --weights {params.weights:q} --dtype {params.dtype} --out {output:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"
