# Language stage: tokenize, embed and reduce the referring expressions (docs/language.md).


wildcard_constraints:
    embedding="|".join(EMBEDDINGS),
    transform="none|pca",
    dim=f"{NATIVE}|[0-9]+",


rule tokenize:
    input:
        data=dataset_inputs(),
    output:
        result("text/tokens.h5"),
    log:
        log_path("text/tokenize"),
    benchmark:
        benchmark_path("text/tokenize")
    conda:
        ENV
    params:
        root=refs_root,
        name=DS["name"],
        split_by=DS["splitBy"],
        images=DS["images"],
        model=LANG["model"],
    shell:
        "rsis tokenize --refs-root {params.root:q} --dataset {params.name}"
        " --split-by {params.split_by} --images {params.images:q}"
        " --model {params.model:q} --out {output:q} > {log:q} 2>&1"


rule embed:
    input:
        result("text/tokens.h5"),
    output:
        result("text/embeddings.h5"),
    log:
        log_path("text/embed"),
    benchmark:
        benchmark_path("text/embed")
    conda:
        ENV
    threads: job_cpus(RESOURCES["embed"]["cpus"])
    resources:
        gpu=RESOURCES["embed"]["gpu"],
        mem_mb=per_attempt("embed", "mem_mb"),
        runtime=per_attempt("embed", "runtime"),
    params:
        model=LANG["model"],
        batch_size=LANG["batch_size"],
        precision=LANG["precision"],
        device=DEVICE["embed"],
    shell:
        "rsis embed --tokens {input:q} --model {params.model:q}"
        " --batch-size {params.batch_size} --precision {params.precision}"
        " --device {params.device} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"


rule reduce:
    input:
        embeddings=result("text/embeddings.h5"),
        tokens=result("text/tokens.h5"),
    output:
        result("text/{embedding}~{transform}~{dim}.h5"),
    log:
        log_path("text/reduce/{embedding}~{transform}~{dim}"),
    benchmark:
        benchmark_path("text/reduce/{embedding}~{transform}~{dim}")
    conda:
        ENV
    params:
        fit_split=pca_fit_split,
    shell:
        "rsis reduce --embeddings {input.embeddings:q} --tokens {input.tokens:q}"
        " --embedding {wildcards.embedding} --transform {wildcards.transform}"
        " --dim {wildcards.dim} --fit-split {params.fit_split} --out {output:q} > {log:q} 2>&1"
