# Data stage: the generated demo dataset and the per-split image/mask caches.


rule demo_dataset:
    output:
        directory(DEMO_ROOT),
    log:
        "logs/demo_dataset.log",
    benchmark:
        "benchmarks/demo_dataset.tsv"
    conda:
        ENV
    threads: config["demo"]["workers"]
    params:
        seed=config["demo"]["seed"],
        scale=config["demo"]["scale"],
        # each at its config value where the scale reads it, else at rsis demo's default
        fraction=demo_plan("fraction"),
        train=demo_plan("train_images"),
        val=demo_plan("val_images"),
        testa=demo_plan("testA_images"),
        testb=demo_plan("testB_images"),
        height=demo_plan("height"),
        width=demo_plan("width"),
        difficulty=config["demo"]["difficulty"],
    shell:
        "rsis demo --out {output:q} --seed {params.seed} --scale {params.scale}"
        " --fraction {params.fraction} --train-images {params.train}"
        " --val-images {params.val} --testa-images {params.testa}"
        " --testb-images {params.testb} --height {params.height} --width {params.width}"
        " --difficulty {params.difficulty} --workers {threads} > {log:q} 2>&1"


rule prepare:
    input:
        data=dataset_inputs(),
    output:
        result("cache/{split}.h5"),
    log:
        log_path("prepare/{split}"),
    benchmark:
        benchmark_path("prepare/{split}")
    conda:
        ENV
    params:
        root=refs_root,
        name=DS["name"],
        split_by=DS["splitBy"],
        images=DS["images"],
        height=SETTING["image_size"][0],
        width=SETTING["image_size"][1],
    shell:
        "rsis prepare --refs-root {params.root:q} --dataset {params.name} --split-by"
        " {params.split_by} --images {params.images:q} --split {wildcards.split}"
        " --height {params.height} --width {params.width} --out {output:q} > {log:q} 2>&1"


if DOWNLOAD:

    # On the submitting node under a cluster executor: compute nodes often have no internet,
    # and a download needs no more than a login node has.
    localrules:
        download_annotations,
        download_images,

    rule download_annotations:
        output:
            refs=f"{DS['root']}/{DS['name']}/refs({DS['splitBy']}).p",
            instances=f"{DS['root']}/{DS['name']}/instances.json",
        log:
            f"logs/download/{DS['name']}.log",
        benchmark:
            f"benchmarks/download/{DS['name']}.tsv"
        conda:
            ENV
        params:
            flags=download_flags(config["download"]["annotations"][DS["name"]]),
            archive=f"resources/downloads/{DS['name']}.zip",
            root=DS["root"],
        shell:
            "rsis download {params.flags} --out {params.archive:q}"
            " --extract-to {params.root:q} > {log:q} 2>&1"

    rule download_images:
        output:
            directory(DS["images"]),
        log:
            "logs/download/train2014.log",
        benchmark:
            "benchmarks/download/train2014.tsv"
        conda:
            ENV
        params:
            flags=download_flags(config["download"]["images"]),
            archive="resources/downloads/train2014.zip",
            parent=lambda wildcards, output: str(Path(output[0]).parent),
        shell:
            "rsis download {params.flags} --out {params.archive:q}"
            " --extract-to {params.parent:q} --remove-archive > {log:q} 2>&1"
