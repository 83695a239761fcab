# Data stage: the generated demo dataset and the per-split image/mask caches.


rule demo_dataset:
    output:
        refs=f"{DEMO_ROOT}/demo/refs(unc).p",
        instances=f"{DEMO_ROOT}/demo/instances.json",
        images=directory(f"{DEMO_ROOT}/images"),
    log:
        "logs/demo_dataset.log",
    benchmark:
        "benchmarks/demo_dataset.tsv"
    params:
        out=DEMO_ROOT,
        seed=config["demo"]["seed"],
        train=config["demo"]["train_images"],
        val=config["demo"]["val_images"],
        testa=config["demo"]["testA_images"],
        testb=config["demo"]["testB_images"],
        height=config["demo"]["height"],
        width=config["demo"]["width"],
    shell:
        "rsis demo --out {params.out} --seed {params.seed} --train-images {params.train}"
        " --val-images {params.val} --testa-images {params.testa}"
        " --testb-images {params.testb} --height {params.height} --width {params.width}"
        " > {log:q} 2>&1"


rule prepare:
    input:
        unpack(refs_files),
        images=image_dir(),
    output:
        result("cache/{split}.h5"),
    log:
        log_path("prepare/{split}"),
    benchmark:
        benchmark_path("prepare/{split}")
    params:
        root=DS["root"],
        name=DS["name"],
        split_by=DS["splitBy"],
        height=SETTING["image_size"][0],
        width=SETTING["image_size"][1],
    shell:
        "rsis prepare --refs-root {params.root:q} --dataset {params.name} --split-by"
        " {params.split_by} --images {input.images:q} --split {wildcards.split}"
        " --height {params.height} --width {params.width} --out {output:q} > {log:q} 2>&1"
