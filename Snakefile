# osteoimmune: public bone-marrow scRNA-seq -> osteoimmune cell-state reports.
# Stages live in workflow/rules/*.smk; the work is done by the library in
# workflow/scripts/osteoimmune/, called from one thin script per rule.

import sys
from pathlib import Path

from snakemake.common.configfile import load_configfile
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, update_config, validate

min_version("9.0")

# This workflow's own folder. config/, the registry and workflow/scripts/ are found from here,
# never from the working directory nor from workflow.basedir (the folder of the main Snakefile:
# the outer workflow's when this one is used as a module). current_basedir is the folder of
# the Snakefile being parsed, i.e. this one, run directly or as a module.
if not workflow.current_basedir.is_local:
    raise WorkflowError(
        "osteoimmune needs a local copy of its repository (the library in workflow/scripts/ and "
        "the registry in config/): clone it at a tag and use `module: snakefile: "
        "'<clone>/Snakefile'` (config/README.md)."
    )
WORKFLOW_DIR = Path(workflow.current_basedir)
DEFAULT_CONFIG = WORKFLOW_DIR / "config" / "config.yaml"
CONFIG_SCHEMA = "config/schemas/config.schema.yaml"
# The library checks the config below, before common.smk sets up the library for the jobs.
sys.path.insert(0, str(WORKFLOW_DIR / "workflow" / "scripts"))

from osteoimmune.configcheck import check_user_sets, describe_config_errors
from osteoimmune.errors import RegistryError


# Run directly, `configfile:` loads the defaults under --configfile/--config. Under a module
# statement with `config:`, Snakemake skips `configfile:` and the module gets only the outer
# workflow's config; so the defaults are merged below as well: what the run or the outer
# workflow sets, over this workflow's config/config.yaml (nested keys one by one).
configfile: str(DEFAULT_CONFIG)


_merged = load_configfile(str(DEFAULT_CONFIG))
update_config(_merged, config)
config = _merged


try:
    validate(config, CONFIG_SCHEMA)  # also fills in the schema's defaults
except WorkflowError as err:
    # Snakemake's message prints the schema around the bad key (100 lines for a typo in a key
    # name); this one names the key, its value and the rule, a line each.
    short = describe_config_errors(config, schema_path=WORKFLOW_DIR / CONFIG_SCHEMA)
    raise WorkflowError(short or str(err)) from None
# The user's signature files are read by the score rules, after QC and clustering: check them
# now. A relative path is in the working directory, where the jobs run.
try:
    check_user_sets(config["signatures"]["user_sets"], workdir=Path.cwd())
except RegistryError as err:
    raise WorkflowError(str(err)) from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/annotate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand("results/{dataset}/report.html", dataset=DATASETS),
        expand("results/{dataset}/{dataset}.h5ad", dataset=DATASETS),
        "results/index.html",
    default_target: True
