# The paper's tables beside ours, and the qualitative figures.


rule tables:
    input:
        expand(
            result("eval/{run}/seed{seed}/{split}~{expression}.json"),
            run=RUNS,
            seed=SEEDS,
            split=EVAL_SPLITS,
            expression=EVAL_EXPRESSIONS,
        ),
    output:
        report(
            result("tables/table1.html"),
            caption="../report/table1.rst",
            category="Tables",
        ),
        result("tables/table1.md"),
        report(
            result("tables/table2.html"),
            caption="../report/table2.rst",
            category="Tables",
        ),
        result("tables/table2.md"),
        report(
            result("tables/expression_check.md"),
            caption="../report/expression_check.rst",
            category="Tables",
        ),
        report(
            result("tables/summary.html"),
            caption="../report/summary.rst",
            category="Summary",
        ),
        result("tables/table1.csv"),
        result("tables/table1.tex"),
        result("tables/table2.csv"),
        result("tables/table2.tex"),
    log:
        log_path("tables"),
    benchmark:
        benchmark_path("tables")
    conda:
        ENV
    params:
        out_dir=output_dir,
        label=DATASET_LABEL,
        grid=json.dumps(config["grid"]),
        expression=TABLE_EXPRESSION,
    shell:
        "rsis tables --metrics {input:q} --grid {params.grid:q} --out-dir {params.out_dir:q}"
        " --dataset-label {params.label:q} --expression {params.expression}"
        " > {log:q} 2>&1"


rule convergence:
    input:
        expand(result("train/{run}/seed{seed}/convergence.json"), run=RUNS, seed=SEEDS),
    output:
        report(
            result("tables/convergence.md"),
            caption="../report/convergence.rst",
            category="Tables",
        ),
    log:
        log_path("convergence"),
    benchmark:
        benchmark_path("convergence")
    conda:
        ENV
    shell:
        "rsis convergence --records {input:q} --out {output:q} > {log:q} 2>&1"


rule figures:
    input:
        predictions=result(f"eval/{FIGURE_DIR}/{{split}}~first.predictions.h5"),
        inverse=result(f"eval/{FIGURE_DIR}/{{split}}~first~reverse.predictions.h5"),
        data=dataset_inputs(),
    output:
        qualitative=report(
            result("figures/qualitative_{split}.png"),
            caption="../report/qualitative.rst",
            category="Figures",
        ),
        inverse=report(
            result("figures/inverse_order_{split}.png"),
            caption="../report/inverse_order.rst",
            category="Figures",
        ),
    log:
        log_path("figures/{split}"),
    benchmark:
        benchmark_path("figures/{split}")
    conda:
        ENV
    params:
        root=refs_root,
        name=DS["name"],
        split_by=DS["splitBy"],
        images=DS["images"],
        num_images=config["figures"]["num_images"],
    shell:
        "rsis figures --predictions {input.predictions:q}"
        " --refs-root {params.root:q} --dataset {params.name} --split-by {params.split_by}"
        " --images {params.images:q} --out {output.qualitative:q}"
        " --inverse-predictions {input.inverse:q} --inverse-out {output.inverse:q}"
        " --num-images {params.num_images} > {log:q} 2>&1"


rule curves:
    input:
        lambda wildcards: [
            result(f"train/{run.id}/seed{seed}/metrics.csv")
            for run in TABLES[wildcards.table].runs
            for seed in SEEDS
        ],
    output:
        report(
            result("figures/curves_{table}.png"),
            caption="../report/curves.rst",
            category="Training curves",
        ),
    log:
        log_path("figures/curves_{table}"),
    benchmark:
        benchmark_path("figures/curves_{table}")
    conda:
        ENV
    params:
        runs=curve_runs,
        title=lambda wildcards: wildcards.table.replace("table", "Table "),
    shell:
        "rsis curves {params.runs} --title {params.title:q} --out {output:q} > {log:q} 2>&1"


rule findings:
    input:
        expand(
            result("eval/{run}/seed{seed}/{split}~{expression}.json"),
            run=RUNS,
            seed=SEEDS,
            split=EVAL_SPLITS,
            expression=config["evaluation"]["expressions"],
        ),
    output:
        report(
            result("findings.md"), caption="../report/findings.rst", category="Tables"
        ),
    log:
        log_path("findings"),
    benchmark:
        benchmark_path("findings")
    conda:
        ENV
    params:
        grid=json.dumps(config["grid"]),
    shell:
        "rsis findings --metrics {input:q} --grid {params.grid:q} --out {output:q} > {log:q} 2>&1"


if IS_DEMO:

    rule expression_types:
        input:
            expand(
                result("eval/{run}/seed{seed}/{split}~{expression}.json"),
                run=RUNS,
                seed=SEEDS,
                split=EVAL_SPLITS,
                expression=TABLE_EXPRESSION,
            ),
        output:
            report(
                result("tables/expression_types.md"),
                caption="../report/expression_types.rst",
                category="Tables",
            ),
            result("tables/expression_types.csv"),
        log:
            log_path("expression_types"),
        benchmark:
            benchmark_path("expression_types")
        conda:
            ENV
        params:
            out_dir=output_dir,
            expression=TABLE_EXPRESSION,
        shell:
            "rsis types --metrics {input:q} --expression {params.expression}"
            " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule summary:
    input:
        result("tables/table1.md"),
        result("tables/table2.md"),
        *DEMO_TABLES,
        result("tables/convergence.md"),
        result("findings.md"),
    output:
        result("summary.md"),
    log:
        log_path("summary"),
    benchmark:
        benchmark_path("summary")
    conda:
        ENV
    shell:
        "rsis summary --parts {input:q} --out {output:q} > {log:q} 2>&1"
