"""Cell-type marker panels for annotation: assembly from the library, coverage in a dataset.

A panel is a gene list that marks one cell type (``cell_type``) or, for a few broad panels,
only a lineage (``cell_type`` None). Its genes come from, in order:

1. the signature library: ``celltype_panel_bone_marrow`` (panel of the same name), the sets
   in :data:`LIBRARY_SETS` and the neutrophil maturation subsets in :data:`LIBRARY_SUBSETS`;
2. :data:`SUPPLEMENT`: lineage genes added here so that datasets holding a small or random
   gene panel (Paul 2015: 240 genes; Luecken 2021: 1,000 / 600 random genes) still carry some
   genes of each lineage. Each panel's supplement cites its sources in
   :data:`SUPPLEMENT_SOURCES` (keys of :data:`REFERENCES`), with the genes that rest on
   general knowledge only ("canonical") or whose attribution is unchecked named; move them to
   the curated reference, with per-gene sources, when it is next rebuilt;
3. the user's ``extra_panels`` (config ``annotation.panels``), which replace a panel's genes
   or add panels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from osteoimmune.errors import SignatureError
from osteoimmune.genes import SPECIES as SPECIES_WITH_ALIASES
from osteoimmune.genes import alias_columns
from osteoimmune.signatures import SignatureLibrary

LINEAGES = (
    "hspc",
    "myeloid",
    "lymphoid",
    "erythroid",
    "megakaryocyte",
    "stromal",
    "osteolineage",
    "endothelial",
)
UNASSIGNED = "unassigned"
CELLTYPE_SET = "celltype_panel_bone_marrow"
# Parent types ("T cell", "neutrophil") are kept when their subtypes cannot be told apart.
CELL_TYPES = {
    "HSC/MPP": "hspc",
    "GMP": "hspc",
    "MEP": "hspc",
    "lymphoid progenitor": "hspc",
    "classical monocyte": "myeloid",
    "non-classical monocyte": "myeloid",
    "macrophage": "myeloid",
    "lipid-associated macrophage": "myeloid",
    "erythroblastic-island macrophage": "myeloid",
    "osteal macrophage": "myeloid",
    "neutrophil": "myeloid",
    "immature neutrophil": "myeloid",
    "mature neutrophil": "myeloid",
    "eosinophil": "myeloid",
    "basophil": "myeloid",
    "mast cell": "myeloid",
    "cDC1": "myeloid",
    "cDC2": "myeloid",
    "pDC": "myeloid",
    "mregDC": "myeloid",
    "osteoclast": "myeloid",
    "NK": "lymphoid",
    "T cell": "lymphoid",
    "CD4 T": "lymphoid",
    "CD8 T": "lymphoid",
    "B progenitor": "lymphoid",
    "mature B": "lymphoid",
    "plasma cell": "lymphoid",
    "erythroid progenitor": "erythroid",
    "erythrocyte": "erythroid",
    "megakaryocyte": "megakaryocyte",
    "LEPR+ CAR stromal": "stromal",
    "osteoblast lineage": "osteolineage",
    "chondrocyte": "osteolineage",
    "endothelial cell": "endothelial",
}
# Cell types that are states of a broader type (type -> family). They compete with the other
# types of their lineage on their own panels (a lipid-associated macrophage must be able to beat
# the osteoclast panel, whose genes it shares), but count as their family wherever a family is
# selected, e.g. the macrophage gate of the M1/M2 calls (osteoimmune.states.gate_mask).
# "osteal macrophage" has no default panel: no transcript is known to set bone-lining (osteal)
# macrophages apart from other tissue macrophages (Chang 2008: F4/80+ CD68+, TRAP-); it is in
# the vocabulary for author labels, reference label transfer and config panels.
FAMILIES = {
    "lipid-associated macrophage": "macrophage",
    "erythroblastic-island macrophage": "macrophage",
    "osteal macrophage": "macrophage",
    "immature neutrophil": "neutrophil",
    "mature neutrophil": "neutrophil",
    "CD4 T": "T cell",
    "CD8 T": "T cell",
}
# Types of bone tissue proper: outside bone (osteoimmune.annotate.tissue_flags) a call of one of
# them is flagged, as its panel genes are shared with cells that are found anywhere (ACP5, MMP9,
# DCSTAMP in lipid-associated macrophages; collagen and SPP1 in fibroblasts).
BONE_TYPES = ("osteoclast", "osteoblast lineage", "chondrocyte", "osteal macrophage")

# Panel name -> (lineage, cell type or None for lineage-only evidence, parent cell type).
PANEL_SPECS: dict[str, tuple[str, str | None, str | None]] = {
    "HSC_MPP": ("hspc", "HSC/MPP", None),
    "GMP_early_myeloid": ("hspc", "GMP", None),
    "MEP_erythroid_progenitor": ("erythroid", "erythroid progenitor", None),
    "erythroblast": ("erythroid", "erythrocyte", None),
    "megakaryocyte_platelet": ("megakaryocyte", "megakaryocyte", None),
    "monocyte_classical": ("myeloid", "classical monocyte", None),
    "monocyte_nonclassical": ("myeloid", "non-classical monocyte", None),
    "macrophage": ("myeloid", "macrophage", None),
    "macrophage_lipid_associated": ("myeloid", "lipid-associated macrophage", None),
    "macrophage_erythroblastic_island": ("myeloid", "erythroblastic-island macrophage", None),
    "neutrophil_lineage": ("myeloid", "neutrophil", None),
    "neutrophil_promyelocyte": ("myeloid", "immature neutrophil", "neutrophil"),
    "neutrophil_immature": ("myeloid", "immature neutrophil", "neutrophil"),
    "neutrophil_mature": ("myeloid", "mature neutrophil", "neutrophil"),
    "eosinophil": ("myeloid", "eosinophil", None),
    "basophil": ("myeloid", "basophil", None),
    "mast": ("myeloid", "mast cell", None),
    "cDC1": ("myeloid", "cDC1", None),
    "cDC2": ("myeloid", "cDC2", None),
    "pDC": ("myeloid", "pDC", None),
    "mregDC": ("myeloid", "mregDC", None),
    "osteoclast": ("myeloid", "osteoclast", None),
    "osteoclast_precursor": ("myeloid", None, None),
    "myeloid_pan": ("myeloid", None, None),
    "NK": ("lymphoid", "NK", None),
    "T": ("lymphoid", "T cell", None),
    "T_CD4": ("lymphoid", "CD4 T", "T cell"),
    "T_CD8": ("lymphoid", "CD8 T", "T cell"),
    "lymphoid_pan": ("lymphoid", None, None),
    "B_progenitor": ("lymphoid", "B progenitor", None),
    "B_mature": ("lymphoid", "mature B", None),
    "plasma": ("lymphoid", "plasma cell", None),
    "endothelial": ("endothelial", "endothelial cell", None),
    "MSC_LEPR_stroma": ("stromal", "LEPR+ CAR stromal", None),
    "osteoblast": ("osteolineage", "osteoblast lineage", None),
    "osteocyte": ("osteolineage", "osteoblast lineage", None),
    "chondrocyte": ("osteolineage", "chondrocyte", None),
}
# Evidence rules, chosen before measuring. Panel -> (core genes, upper case, both species; the
# minimum of them present and detected): a panel with fewer is not used (Irf8, the one cDC1
# gene of Paul 2015's 240, is expressed by basophils and GMPs too), and a cell keeps the type
# only if its smoothed score of the core genes reaches min_score (osteoclasts: the resorption
# and fusion genes, not ACP5 / MMP9 alone, which lipid-associated macrophages share).
CORE_GENES = {
    "cDC1": (("XCR1", "CLEC9A", "BATF3", "WDFY4", "NAAA", "DNASE1L3", "C1ORF54", "CLNK"), 2),
    "osteoclast": (
        ("CTSK", "ACP5", "DCSTAMP", "OCSTAMP", "NFATC1", "ATP6V0D2", "CALCR", "OSCAR", "SIGLEC15"),
        3,
    ),
    "mregDC": (("LAMP3", "CCR7", "FSCN1", "CCL22", "CCL17", "IL4I1"), 2),
    # APOE, CD9, LGALS3, CD36 are left out: progenitors, megakaryocytes and monocytes have them.
    "macrophage_lipid_associated": (
        ("TREM2", "SPP1", "GPNMB", "LPL", "FABP4", "FABP5", "LIPA"),
        2,
    ),
    "macrophage_erythroblastic_island": (("SIGLEC1", "VCAM1", "SPIC"), 2),
}
# Panels of a state of a type (activation, niche): their genes do not count for the lineage
# step (APOE, CD9, HMOX1 are in progenitors too), but they still make a gene they share with
# another lineage non-specific (CCR7: mregDC and T cells).
STATE_PANELS = ("macrophage_lipid_associated", "macrophage_erythroblastic_island", "mregDC")
# Subtypes called only where the cluster's cells show their genes (annotate.t_subtype_evidence):
# detected (count > 0) in at least SUBTYPE_MIN_FRACTION of the cluster's T cells and at least
# SUBTYPE_MIN_RATIO times the fraction of the other subtype's genes.
SUBTYPE_GENES = {
    "CD8 T": ("CD8A", "CD8B", "CD8B1"),
    "CD4 T": ("CD4", "CD40LG"),
}
SUBTYPE_MIN_FRACTION = 0.25
SUBTYPE_MIN_RATIO = 2.0

# Library sets (their gene list of the species) merged into a panel.
LIBRARY_SETS = {
    "osteoclast": "osteoclast_differentiation_core",
    "osteoclast_precursor": "osteoclast_precursor_mouse",
    "osteoblast": "osteoblast_lineage_core",
    "osteocyte": "osteocyte_core",
    "MSC_LEPR_stroma": "bm_stromal_LEPR_CAR_niche",
}
LIBRARY_SUBSETS = {
    "neutrophil_promyelocyte": ("neutrophil_maturation_stages", "promyelocyte"),
    "neutrophil_immature": ("neutrophil_maturation_stages", "myelocyte"),
    "neutrophil_mature": ("neutrophil_maturation_stages", "mature"),
}

_HUMAN = {
    "HSC_MPP": "MLLT3 MEIS1 HOXA9 BAALC SMIM24 CYTL1",
    "GMP_early_myeloid": "CTSG RNASE2",
    "MEP_erythroid_progenitor": "TAL1 CNRIP1 PKLR EPOR TFR2 RHAG KEL ERMAP BLVRB",
    "erythroblast": "HBA2 HBD HBM GYPB AHSP SPTA1 ANK1 EPB42 SLC25A37 SELENBP1 SNCA HEMGN "
    "TMCC2 FECH UROD BPGM TRIM58 DMTN RHD HBQ1",
    "megakaryocyte_platelet": "GP1BB GP6 TUBB1 MPL CLEC1B GNG11 TREML1 NRGN CAVIN2 MYL9 PEAR1 "
    "SELP PF4V1 CMTM5",
    "monocyte_classical": "S100A12 CTSS LGALS2 CD36 MNDA CCR2 MS4A6A FPR1 PLBD1",
    "monocyte_nonclassical": "HES4 RHOC SIGLEC10 TCF7L2 LYPD2 VMO1 CSF1R",
    "macrophage": "APOE SELENOP LYVE1 MARCO FOLR2 SLC40A1 HMOX1 SPIC MAF CD5L",
    "macrophage_lipid_associated": "TREM2 APOE LPL SPP1 GPNMB FABP5 FABP4 CD9 LGALS3 LIPA CD36",
    "macrophage_erythroblastic_island": "SIGLEC1 VCAM1 HMOX1 SPIC SLC40A1 CD163 ITGA4 MAF",
    "neutrophil_lineage": "CXCR1 MME CEACAM8 CEACAM6 CRISP3 OLFM4 MMP9 PADI4 CMTM2 PROK2 "
    "S100P ARG1",
    "neutrophil_immature": "OLFM4 CEACAM6 BPI",
    "neutrophil_mature": "CXCR1 PADI4 CMTM2 PROK2 FPR2",
    "eosinophil": "CCR3 SIGLEC8 ALOX15 PTGDR2 RNASE3",
    "basophil": "CLC HDC MS4A2 GATA2 ENPP3",
    "mast": "HPGDS CMA1 TPSAB1 TPSB2 KIT",
    "cDC1": "BATF3 WDFY4 C1orf54 CLNK DNASE1L3",
    "cDC2": "CD1E HLA-DQA1 HLA-DQB1 PKIB",
    "pDC": "PLD4 SERPINF1 ITM2C PTCRA LAMP5 SCT",
    "mregDC": "LAMP3 CCR7 FSCN1 CCL22 CCL17 IDO1 CD274 CD40 IL4I1 MARCKSL1",
    "NK": "KLRC1 NCR1 SH2D1B SPON2 KIR2DL1 KIR2DL3 KIR2DL4 KIR3DL1 KIR3DL2",
    "T": "CD3G CD2 CD5 CD6 CD28 CD247 LCK ITK TRAC TRBC1 TRBC2 TRGC1 TRGC2 BCL11B SKAP1 THEMIS",
    "T_CD4": "CD4 CD40LG ZBTB7B ANKRD55",
    "T_CD8": "CD8A CD8B",
    "lymphoid_pan": "IKZF3 CD2 CD7 CD247 LCK CD96 LTB IL7R",
    "B_progenitor": "VPREB3 RAG1 RAG2 CD79B PAX5 CD19 ARPP21",
    "B_mature": "CD79B CD22 PAX5 FCRLA CR2 FCER2 TCL1A IGHM IGHD BLK FCRL1",
    "plasma": "DERL3 TXNDC5 FKBP11 IGHG1 IGHA1",
    "myeloid_pan": "CD33 ITGAM CYBB NCF1 NCF2 AIF1 CSF1R PLAUR CLEC7A FCGR2A TLR2 LILRB2 LYZ "
    "CST3 CD68",
    "endothelial": "CLDN5 ESAM TIE1 TEK FLT1 EGFL7 RAMP2 PLVAP STAB2",
    "MSC_LEPR_stroma": "PDGFRA",
    "chondrocyte": "SOX9 COL2A1 ACAN COL10A1 COMP MATN3 COL9A1 COL9A2 COL11A2 CHAD HAPLN1 "
    "SNORC UCMA CNMD",
}
_MOUSE = {
    "HSC_MPP": "Meis1 Hoxa9 Ctla2a",
    "MEP_erythroid_progenitor": "Tal1 Pklr Epor Tfr2 Rhd Ermap Aqp1 Alad Hmbs Urod Fech Cpox",
    "erythroblast": "Hba-a2 Hbb-bt Hbb-b1 Hbb-b2 Beta-s Spta1 Ank1 Epb42 Snca Bpgm Trim10 "
    "Tmcc2 Hemgn Slc25a37",
    "megakaryocyte_platelet": "Gp1bb Gp5 Gp6 Tubb1 Mpl Clec1b Treml1 Cavin2",
    "monocyte_classical": "Ms4a6c Csf1r Fcgr1",
    "macrophage": "Spic Cd5l Slc40a1 Mrc1 Cd68 Marco",
    "macrophage_lipid_associated": "Trem2 Apoe Lpl Spp1 Gpnmb Fabp5 Fabp4 Cd9 Lgals3 Lipa Cd36",
    "macrophage_erythroblastic_island": "Siglec1 Vcam1 Hmox1 Spic Slc40a1 Cd163 Itga4 Maf",
    "neutrophil_lineage": "Cd177 Chil3 Lcn2 Mmp8 Mmp9 Wfdc21 Lrg1 Fpr1 Fpr2",
    "neutrophil_immature": "Fcnb",
    "neutrophil_mature": "Fpr1 Fpr2",
    "eosinophil": "Prg3 Ear1 Ear6 Ccr3 Il5ra Alox15",
    "basophil": "Prss34 Mcpt8 Cpa3 Ms4a2 Gata2 Hdc",
    "mast": "Mcpt1 Mcpt2 Tpsab1 Cma1 Mcpt4 Kit",
    "cDC1": "Batf3 Wdfy4 Naaa",
    "cDC2": "Clec4a4",
    "pDC": "Klk1 Spib Tcf4",
    "mregDC": "Lamp3 Ccr7 Fscn1 Ccl22 Ccl17 Cd274 Cd40 Il4i1 Marcksl1",
    "NK": "Klra4 Klra7 Klra8 Klrc1",
    "T": "Cd3d Cd2 Cd5 Cd6 Cd28 Cd247 Lck Itk Trbc1 Trbc2 Bcl11b Themis Skap1",
    "T_CD4": "Cd4 Cd40lg Zbtb7b",
    "T_CD8": "Cd8a Cd8b1",
    "lymphoid_pan": "Ikzf3 Cd2 Cd7 Cd247 Lck Ltb Il7r Cd96",
    "B_progenitor": "Vpreb3 Rag2 Cd19 Pax5 Cd79b",
    "B_mature": "Cd79b Cd22 Pax5 Ighd Ighm H2-Ob Fcrla Bank1",
    "plasma": "Igkc Derl3 Txndc5 Fkbp11 Ighg1 Igha",
    "myeloid_pan": "Itgam Cybb Ncf1 Ncf2 Aif1 Csf1r Lyz2 Cd68 Clec7a Tlr2 Cst3",
    "endothelial": "Tek Tie1 Cldn5 Esam Egfl7 Ramp2 Flt1 Plvap",
    "MSC_LEPR_stroma": "Pdgfra Pdgfrb",
    "chondrocyte": "Sox9 Col2a1 Acan Col10a1 Comp Matn3 Col9a1 Col9a2 Col11a2 Chad Hapln1 "
    "Snorc Ucma Cnmd",
}
SUPPLEMENT = {
    "human": {name: genes.split() for name, genes in _HUMAN.items()},
    "mouse": {name: genes.split() for name, genes in _MOUSE.items()},
}
# Works cited by the supplement, by key; a DOI only where checked.
REFERENCES = {
    "baccin2020": "Baccin C et al. Combined single-cell and spatial transcriptomics reveal the "
    "molecular, cellular and spatial bone marrow niche organization. Nat Cell Biol 2020;22:38-48. "
    "doi:10.1038/s41556-019-0439-6",
    "chang2008": "Chang MK et al. Osteal tissue macrophages are intercalated throughout human "
    "and mouse bone lining tissues and regulate osteoblast function in vivo and in vitro. "
    "J Immunol 2008;181:1232-1244. doi:10.4049/jimmunol.181.2.1232",
    "chow2013": "Chow A et al. CD169+ macrophages provide a niche promoting erythropoiesis under "
    "homeostasis and stress. Nat Med 2013;19:429-436. doi:10.1038/nm.3057",
    "calvanese2019": "Calvanese V et al. MLLT3 governs human haematopoietic stem-cell "
    "self-renewal and engraftment. Nature 2019;576:281-286. doi:10.1038/s41586-019-1790-2",
    "cisse2008": "Cisse B et al. Transcription factor E2-2 is an essential and specific "
    "regulator of plasmacytoid dendritic cell development. Cell 2008;135:37-48",
    "cowland2016": "Cowland JB, Borregaard N. Granulopoiesis and granules of human "
    "neutrophils. Immunol Rev 2016;273:11-28. doi:10.1111/imr.12440",
    "crinier2018": "Crinier A et al. High-dimensional single-cell analysis identifies "
    "organ-specific signatures and conserved NK cell subsets in humans and mice. Immunity "
    "2018;49:971-986. doi:10.1016/j.immuni.2018.09.009",
    "dudziak2007": "Dudziak D et al. Differential antigen processing by dendritic cell subsets "
    "in vivo. Science 2007;315:107-111",
    "dwyer2016": "Dwyer DF, Barrett NA, Austen KF; ImmGen Consortium. Expression profiling of "
    "constitutive mast cells reveals a unique identity within the immune system. Nat Immunol "
    "2016;17:878-887. doi:10.1038/ni.3445",
    "hao2021": "Hao Y et al. Integrated analysis of multimodal single-cell data. Cell "
    "2021;184:3573-3587. doi:10.1016/j.cell.2021.04.048 (Azimuth PBMC reference and its marker "
    "lists)",
    "hay2018": "Hay SB et al. The Human Cell Atlas bone marrow single-cell interactive web "
    "portal. Exp Hematol 2018;68:51-61. doi:10.1016/j.exphem.2018.09.004",
    "he2005": "He X et al. The zinc finger transcription factor Th-POK regulates CD4 versus "
    "CD8 T-cell lineage commitment. Nature 2005;433:826-833. doi:10.1038/nature03338",
    "hildner2008": "Hildner K et al. Batf3 deficiency reveals a critical role for CD8alpha+ "
    "dendritic cells in cytotoxic T cell immunity. Science 2008;322:1097-1100. "
    "doi:10.1126/science.1164206",
    "jaitin2019": "Jaitin DA et al. Lipid-associated macrophages control metabolic homeostasis "
    "in a Trem2-dependent manner. Cell 2019;178:686-698. doi:10.1016/j.cell.2019.05.054",
    "kalucka2020": "Kalucka J et al. Single-cell transcriptome atlas of murine endothelial "
    "cells. Cell 2020;180:764-779. doi:10.1016/j.cell.2020.01.015",
    "kohyama2009": "Kohyama M et al. Role for Spi-C in the development of red pulp "
    "macrophages and splenic iron homeostasis. Nature 2009;457:318-321. doi:10.1038/nature07472",
    "li2019": "Li W et al. Identification and transcriptome analysis of erythroblastic island "
    "macrophages. Blood 2019;134:480-491. doi:10.1182/blood.2019000430",
    "maier2020": "Maier B et al. A conserved dendritic-cell regulatory program limits antitumour "
    "immunity. Nature 2020;580:257-262. doi:10.1038/s41586-020-2134-y",
    "paul2015": "Paul F et al. Transcriptional heterogeneity and lineage commitment in myeloid "
    "progenitors. Cell 2015;163:1663-1677. doi:10.1016/j.cell.2015.11.013",
    "theisen2018": "Theisen DJ et al. WDFY4 is required for cross-presentation in response to "
    "viral and tumor antigens. Science 2018;362:694-699. doi:10.1126/science.aat5030",
    "tikhonova2019": "Tikhonova AN et al. The bone marrow microenvironment at single-cell "
    "resolution. Nature 2019;569:222-228. doi:10.1038/s41586-019-1104-8",
    "villani2017": "Villani AC et al. Single-cell RNA-seq reveals new types of human blood "
    "dendritic cells, monocytes, and progenitors. Science 2017;356:eaah4573. "
    "doi:10.1126/science.aah4573",
    "xie2020": "Xie X et al. Single-cell transcriptome profiling reveals neutrophil "
    "heterogeneity in homeostasis and infection. Nat Immunol 2020;21:1119-1133. "
    "doi:10.1038/s41590-020-0736-z",
}
# Per supplement panel (both species): two keys of REFERENCES ("" for none) of works that
# report its genes as markers of the type, then a note naming what rests on general knowledge
# only ("canonical": textbook identity genes, e.g. the TCR/CD3 complex or heme-synthesis
# enzymes, not checked gene by gene against a paper here) or is unchecked.
SUPPLEMENT_SOURCES = {
    "HSC_MPP": (
        "calvanese2019",
        "hay2018",
        "canonical: MEIS1, HOXA9 (HSPC transcription "
        "factors); human BAALC, SMIM24, CYTL1 and mouse Ctla2a are HSPC-cluster genes "
        "of single-cell atlases, per-gene attribution unchecked",
    ),
    "GMP_early_myeloid": (
        "cowland2016",
        "hay2018",
        "CTSG: azurophil granule protein; RNASE2 unchecked",
    ),
    "MEP_erythroid_progenitor": (
        "paul2015",
        "hay2018",
        "canonical: heme-synthesis enzymes "
        "(Alad, Hmbs, Urod, Cpox, Fech) and erythroid receptors "
        "(EPOR, TFR2); CNRIP1 unchecked",
    ),
    "erythroblast": ("hay2018", "paul2015", "canonical: globins, red-cell membrane proteins"),
    "megakaryocyte_platelet": (
        "hao2021",
        "hay2018",
        "canonical: platelet glycoproteins (GP1BB, GP6, GP5), TUBB1, MPL",
    ),
    "monocyte_classical": ("villani2017", "hao2021", ""),
    "monocyte_nonclassical": ("villani2017", "hao2021", "LYPD2, VMO1 unchecked"),
    "macrophage": (
        "kohyama2009",
        "baccin2020",
        "SPIC, SLC40A1, HMOX1, CD5L: iron-recycling macrophages; LYVE1, FOLR2, MARCO canonical",
    ),
    "macrophage_lipid_associated": (
        "jaitin2019",
        "",
        "LIPA, CD36 (lipid uptake) canonical; the osteoclast-like macrophage: ACP5, DCSTAMP "
        "and MMP9 can be high too, so the osteoclast call needs osteoclast-specific genes",
    ),
    "macrophage_erythroblastic_island": (
        "chow2013",
        "li2019",
        "SIGLEC1 (CD169), VCAM1, ITGA4 per chow2013; HMOX1, SPIC, SLC40A1, CD163, MAF: iron "
        "recycling, shared with other iron-recycling macrophages",
    ),
    "neutrophil_lineage": ("xie2020", "cowland2016", ""),
    "neutrophil_immature": (
        "cowland2016",
        "xie2020",
        "OLFM4, CEACAM6, BPI: specific-granule stage; mouse Fcnb",
    ),
    "neutrophil_mature": ("xie2020", "cowland2016", ""),
    "eosinophil": (
        "",
        "",
        "canonical: CCR3, IL5RA, SIGLEC8, RNASE3 (ECP), PTGDR2, ALOX15, mouse Ear and Prg genes",
    ),
    "basophil": ("dwyer2016", "paul2015", "human CLC, ENPP3 (CD203c) canonical"),
    "mast": ("dwyer2016", "", "canonical: tryptases, chymase, KIT"),
    "mregDC": ("maier2020", "", "mouse Ido1 left out: expressed by cDC1 at rest"),
    "cDC1": (
        "hildner2008",
        "theisen2018",
        "BATF3, WDFY4; human C1orf54, CLNK, DNASE1L3 (villani2017) and mouse Naaa unchecked",
    ),
    "cDC2": ("villani2017", "dudziak2007", "mouse Clec4a4 (DCIR2, 33D1); human PKIB unchecked"),
    "pDC": (
        "cisse2008",
        "villani2017",
        "TCF4 (E2-2), SPIB; PLD4, SERPINF1, ITM2C per hao2021; mouse Klk1 unchecked",
    ),
    "NK": ("crinier2018", "", ""),
    "T": ("hao2021", "", "canonical: TCR/CD3 complex, LCK, ITK, BCL11B, THEMIS"),
    "T_CD4": ("he2005", "hao2021", "ZBTB7B (Th-POK); ANKRD55 unchecked"),
    "T_CD8": ("hao2021", "", "canonical: CD8A, CD8B"),
    "lymphoid_pan": ("hao2021", "", "canonical"),
    "B_progenitor": ("hay2018", "", "canonical: VPREB3, RAG1/2, PAX5, CD19; ARPP21 unchecked"),
    "B_mature": ("hao2021", "", "canonical: CD22, PAX5, CR2, FCER2, IGHM, IGHD, BLK"),
    "plasma": (
        "hao2021",
        "hay2018",
        "canonical: immunoglobulin heavy chains, ER genes DERL3, TXNDC5, FKBP11",
    ),
    "myeloid_pan": (
        "villani2017",
        "",
        "canonical: NADPH-oxidase subunits, CD33, ITGAM, AIF1, LYZ, CST3",
    ),
    "endothelial": ("kalucka2020", "tikhonova2019", ""),
    "MSC_LEPR_stroma": ("tikhonova2019", "baccin2020", ""),
    "chondrocyte": (
        "baccin2020",
        "",
        "canonical: cartilage matrix (COL2A1, ACAN, COL9/11, "
        "MATN3, COMP, HAPLN1, COL10A1 hypertrophic), SOX9, SNORC, UCMA, CNMD",
    ),
}


def supplement_source(name: str) -> str:
    """The citation line of the supplement genes of panel ``name`` (for coverage tables)."""
    *keys, note = SUPPLEMENT_SOURCES[name]
    cited = "; ".join(REFERENCES[k] for k in keys if k)
    return f"osteoimmune.panels.SUPPLEMENT ({cited}{'; ' + note if note else ''})"


COVERAGE_COLUMNS = (
    "lineage",
    "cell_type",
    "parent",
    "n_genes",
    "n_present",
    "n_expressed",
    "fraction_present",
    "used",
    "complete",
    "reason",
    "present",
    "missing",
    "sources",
)
# Symbol columns looked for in var when var_names are Ensembl IDs.
SYMBOL_COLUMNS = ("gene_symbol", "gene_symbols", "symbol", "feature_name", "gene_name")
_ENSEMBL = r"^ENS[A-Z]*G\d{6,}"


@dataclass(frozen=True)
class Panel:
    """A marker panel: its genes and the lineage / cell type it marks.

    Attributes
    ----------
    name
        The panel name (``celltype_panel_bone_marrow`` names where the library has one).
    lineage
        One of :data:`LINEAGES`.
    cell_type
        One of :data:`CELL_TYPES`, or None for a panel that is evidence for the lineage only.
    parent
        For a subtype panel (``CD4 T``), the cell type it refines (``T cell``).
    genes
        Gene symbols of the dataset's species, without duplicates.
    sources
        Where the genes come from (library set names, the supplement, ``config``).
    """

    name: str
    lineage: str
    cell_type: str | None
    parent: str | None
    genes: tuple[str, ...]
    sources: tuple[str, ...]


def _library_genes(library: SignatureLibrary, name: str, species: str) -> tuple[list, list]:
    """Genes of panel ``name`` from the library, and the library sets they come from."""
    genes, sources = [], []
    panel = (library.sets.get(CELLTYPE_SET, {}).get("panels") or {}).get(species, {})
    if name in panel:
        genes += panel[name]
        sources.append(CELLTYPE_SET)
    set_genes = library.sets.get(LIBRARY_SETS.get(name), {}).get("genes", {})
    if set_genes.get(species):
        genes += set_genes[species]
        sources.append(LIBRARY_SETS[name])
    if name in LIBRARY_SUBSETS:
        set_name, subset = LIBRARY_SUBSETS[name]
        subsets = library.sets.get(set_name, {}).get("subsets") or {}
        if subsets.get(subset, {}).get(species):
            genes += subsets[subset][species]
            sources.append(f"{set_name}.{subset}")
    return genes, sources


def _extra_panel(name: str, entry, species: str) -> tuple[tuple, list[str]]:
    """Check one user panel; return its (lineage, cell type, parent) and genes."""
    where = f"Annotation panel '{name}' ({species}, config annotation.panels)"
    if isinstance(entry, list):
        entry = {"genes": entry}
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("genes"), list)
        or not all(isinstance(g, str) and g for g in entry["genes"])
    ):
        msg = f"{where}: expected a list of gene symbols, or a mapping with 'genes'."
        raise SignatureError(msg)
    if name in PANEL_SPECS and "lineage" not in entry:
        return PANEL_SPECS[name], entry["genes"]
    lineage, cell_type = entry.get("lineage"), entry.get("cell_type")
    if lineage not in LINEAGES:
        msg = (
            f"{where}: a new panel needs 'lineage' (one of {', '.join(LINEAGES)}) and "
            f"optionally 'cell_type'; got lineage {lineage!r}. Known panels: "
            f"{', '.join(PANEL_SPECS)}."
        )
        raise SignatureError(msg)
    if cell_type is not None and CELL_TYPES.get(cell_type) != lineage:
        types = [t for t, lin in CELL_TYPES.items() if lin == lineage]
        msg = f"{where}: cell_type {cell_type!r} is not a type of lineage '{lineage}': {types}."
        raise SignatureError(msg)
    return (lineage, cell_type, None), entry["genes"]


def build_panels(
    library: SignatureLibrary,
    species: str,
    *,
    extra_panels: dict | None = None,
    supplement: bool = True,
) -> dict[str, Panel]:
    """Assemble the annotation panels of ``species``.

    Parameters
    ----------
    library
        The signature library (see :func:`osteoimmune.signatures.load_library`).
    species
        ``human`` or ``mouse``.
    extra_panels
        ``{species: {panel: genes}}`` from config ``annotation.panels``. ``genes`` is a list
        (replaces the genes of a known panel) or ``{genes, lineage, cell_type}`` (a new panel;
        ``cell_type`` may be omitted for lineage-only evidence).
    supplement
        Add the genes of :data:`SUPPLEMENT` to the library's panels.

    Returns
    -------
    dict
        Panel name -> :class:`Panel`, for panels with at least one gene.
    """
    if species not in SUPPLEMENT:
        msg = f"Unknown species '{species}'; allowed: {', '.join(SUPPLEMENT)}."
        raise SignatureError(msg)
    panels = {}
    for name, spec in PANEL_SPECS.items():
        genes, sources = _library_genes(library, name, species)
        if supplement and SUPPLEMENT[species].get(name):
            genes += SUPPLEMENT[species][name]
            sources.append(supplement_source(name))
        if genes:
            panels[name] = Panel(name, *spec, tuple(dict.fromkeys(genes)), tuple(sources))
    for name, entry in ((extra_panels or {}).get(species) or {}).items():
        spec, genes = _extra_panel(name, entry, species)
        panels[name] = Panel(name, *spec, tuple(dict.fromkeys(genes)), ("config",))
    return panels


def gene_positions(
    adata: AnnData,
    *,
    case_insensitive: bool = False,
    species: str | None = None,
    aliases: bool = True,
) -> dict[str, int]:
    """Map gene symbols to columns of ``adata``, through a var symbol column for Ensembl IDs.

    Parameters
    ----------
    adata
        The dataset.
    case_insensitive
        Match on upper case (datasets that store mouse symbols upper-cased).
    species
        ``human`` or ``mouse``: a current symbol absent from the data also maps to the column
        of its previous or alias symbol (IL8 for CXCL8; :func:`osteoimmune.genes.alias_columns`).
        Default: the species the pipeline recorded in ``uns['osteoimmune']``, if any.
    aliases
        False: exact symbols only.

    Returns
    -------
    dict
        Symbol (upper-cased if ``case_insensitive``) -> column index; the first column wins.
    """
    if species is None:
        species = adata.uns.get("osteoimmune", {}).get("species")
    names = pd.Index(adata.var_names).astype(str)
    if names.str.match(_ENSEMBL).mean() > 0.5:
        column = next((c for c in SYMBOL_COLUMNS if c in adata.var), None)
        if column is None:
            msg = (
                f"var_names are Ensembl gene IDs (e.g. '{names[0]}') and var has no symbol "
                f"column ({', '.join(SYMBOL_COLUMNS)}); marker panels are gene symbols. Add a "
                "symbol column to var or set `gene_column:` in the registry."
            )
            raise SignatureError(msg)
        names = pd.Index(adata.var[column]).astype(str)
    if case_insensitive:
        names = names.str.upper()
    positions: dict[str, int] = {}
    for index, name in enumerate(names):
        positions.setdefault(name, index)
    if aliases and species in SPECIES_WITH_ALIASES:
        for symbol, index in alias_columns(
            names, species=species, case_insensitive=case_insensitive
        ).items():
            positions.setdefault(symbol, index)
    return positions


def _detected(adata: AnnData, columns: list[int]) -> np.ndarray:
    """Cells with a nonzero value, per column (stays sparse)."""
    x = adata.X[:, columns]
    nonzero = (x != 0).sum(axis=0) if sparse.issparse(x) else (np.asarray(x) != 0).sum(axis=0)
    return np.asarray(nonzero).ravel()


def panel_coverage(
    adata: AnnData,
    panels: dict[str, Panel],
    *,
    min_genes: int = 2,
    min_coverage: float = 0.5,
    case_insensitive: bool = False,
    species: str | None = None,
) -> pd.DataFrame:
    """How much of each panel the dataset holds, and whether it is used.

    A panel is used when at least ``min_genes`` of its genes are present and detected in some
    cell; it is then scored on those genes only. A used panel with fewer than ``min_coverage``
    of its genes present is marked incomplete (``complete`` False): its score rests on a part
    of the panel, which the annotation reports. Genes are also found by previous or alias
    symbols (see :func:`gene_positions`, which takes ``species`` and its default).

    Returns
    -------
    pandas.DataFrame
        One row per panel (index ``panel``), columns :data:`COVERAGE_COLUMNS` and
        ``aliases_used`` (e.g. ``CXCL8<-IL8``); ``present`` and ``missing`` are comma-joined
        symbols.
    """
    positions = gene_positions(adata, case_insensitive=case_insensitive, species=species)
    exact = gene_positions(adata, case_insensitive=case_insensitive, aliases=False)
    spelled = {index: symbol for symbol, index in exact.items()}
    key = str.upper if case_insensitive else str
    every = sorted(
        {positions[key(g)] for p in panels.values() for g in p.genes if key(g) in positions}
    )
    detected = dict(zip(every, _detected(adata, every), strict=True)) if every else {}
    rows = []
    for panel in panels.values():
        present = [g for g in panel.genes if key(g) in positions]
        expressed = [g for g in present if detected[positions[key(g)]] > 0]
        fraction = len(present) / len(panel.genes)
        used = len(expressed) >= min_genes
        reason = (
            ""
            if used
            else (
                f"{len(expressed)} of {len(panel.genes)} genes present and detected, "
                f"below the minimum of {min_genes}"
            )
        )
        rows.append(
            (
                panel.lineage,
                panel.cell_type,
                panel.parent,
                len(panel.genes),
                len(present),
                len(expressed),
                fraction,
                used,
                used and fraction >= min_coverage,
                reason,
                ",".join(present),
                ",".join(g for g in panel.genes if key(g) not in positions),
                "; ".join(panel.sources),
            )
        )
    table = pd.DataFrame(
        rows, columns=list(COVERAGE_COLUMNS), index=pd.Index(list(panels), name="panel")
    )
    table["aliases_used"] = [
        "; ".join(
            f"{g}<-{spelled.get(positions[key(g)], adata.var_names[positions[key(g)]])}"
            for g in panel.genes
            if key(g) in positions and key(g) not in exact
        )
        for panel in panels.values()
    ]
    _check_species(table, adata, panels, case_insensitive=case_insensitive)
    return table


def _check_species(
    table: pd.DataFrame, adata: AnnData, panels: dict[str, Panel], *, case_insensitive: bool
) -> None:
    """Raise when symbols are of the other species or nothing usable is present."""
    n_present = int(table["n_present"].sum())
    names = pd.Index(adata.var_names).astype(str)
    genes = {g for p in panels.values() for g in p.genes}
    upper = {g.upper() for g in genes}
    # Same symbols in the other species' case: e.g. CD3E for Cd3e, Cd3e for CD3E.
    other_case = names[~names.isin(genes) & names.str.upper().isin(upper)]
    if not case_insensitive and len(other_case) > max(5, 2 * n_present):
        msg = (
            f"Only {n_present} marker-panel genes match var_names exactly, but "
            f"{len(other_case)} match in another letter case (e.g. {', '.join(other_case[:3])}):"
            " the gene symbols look like those of the other species. Check the dataset's "
            "`species:`, or set `gene_symbol_case: upper` if the source upper-cased them."
        )
        raise SignatureError(msg)
    if not table["used"].any():
        msg = (
            f"No marker panel has enough of its genes in the dataset ({n_present} panel genes "
            f"present in {adata.n_vars} var_names, e.g. {', '.join(names[:3])}); check that "
            "var_names are gene symbols of the dataset's species."
        )
        raise SignatureError(msg)


def lineage_specific(panels: dict[str, Panel]) -> dict[str, Panel]:
    """The panels without genes that panels of another lineage also list, plus lineage unions.

    A gene in two lineages' panels (CD34: HSC and B progenitors; Car2: erythroid progenitors
    and osteoclasts; Mpo: GMP and promyelocytes) cannot tell those lineages apart, so the
    lineage step scores panels without them; panels left without genes are dropped, and so are
    the :data:`STATE_PANELS` (whose genes still count as listed by their lineage). Each
    lineage also gets a union panel ``<lineage>_lineage`` of all its specific genes, where
    weak but agreeing genes of different panels add up (small or random gene panels).
    """
    lineages: dict[str, set[str]] = {}
    for panel in panels.values():
        for gene in panel.genes:
            lineages.setdefault(gene, set()).add(panel.lineage)
    out = {}
    for name, panel in panels.items():
        if name in STATE_PANELS:
            continue
        genes = tuple(g for g in panel.genes if len(lineages[g]) == 1)
        if genes:
            out[name] = Panel(
                name, panel.lineage, panel.cell_type, panel.parent, genes, panel.sources
            )
    for lineage in LINEAGES:
        genes = [g for p in out.values() if p.lineage == lineage for g in p.genes]
        if genes:
            name = f"{lineage}_lineage"
            out[name] = Panel(
                name,
                lineage,
                None,
                None,
                tuple(dict.fromkeys(genes)),
                ("union of the lineage's specific genes",),
            )
    return out
