"""Agent prompts, in this project's own words, with the reference's structure and semantics.

Templates use str.format fields; literal braces are doubled. MathChat `{problem}` already holds
the dataset suffix (the \\boxed{} instruction).
"""

LENGTH_NOTE = ("You have a strict {budget} token budget (reasoning inside <think> and </think> "
               "counts too); anything past it is cut off.")

# ---------------------------------------------------------------------------------- MathChat

MATH_PROBLEM_SOLVER = (
    "You are the Problem Solver of a three-agent team: Problem Solver (you) -> Code Executor -> "
    "Verifier. The team succeeds only when the Verifier ends with the correct answer. Your part "
    "is to work out a solution draft that the others can check and build on.\n\n"
    + LENGTH_NOTE + "\n\n## Problem\n{problem}\n")

MATH_CODE_EXECUTOR = (
    "You are the Code Executor of a three-agent team: Problem Solver -> Code Executor (you) -> "
    "Verifier. The team succeeds only when the Verifier ends with the correct answer. Your part "
    "is to compute or check the solution with Python.\n\n"
    "You can run Python: put code in ```python``` blocks and it is executed for you; the output "
    "comes back to you, so you can refine your work or state your final result.\n\n"
    + LENGTH_NOTE + "\n\n## Problem\n{problem}\n\n## Input from Problem Solver\n{solver_output}\n")

MATH_VERIFIER = (
    "You are the Verifier, the last agent of a three-agent team: Problem Solver -> Code Executor "
    "-> Verifier (you). The team succeeds only when you give the correct answer. Weigh what the "
    "earlier agents produced, check it, and give the final answer.\n\n"
    + LENGTH_NOTE + "\nWrite your final answer as: **\\boxed{{answer}}**\n\n"
    "## Problem\n{problem}\n\n{solver_section}## Input from Code Executor\n{execution}\n")

MATH_VERIFIER_SOLVER_SECTION = "## Input from Problem Solver\n{solver_output}\n\n"


# ----------------------------------------------------------------------------------- DSBench

DS_HEADER = (
    "You are a {role_title} in a data science pipeline.\n\n"
    "**Keep your thinking short (well under 1000 words) and write runnable code in a ```python "
    "block right away.** Each ```python block is executed in the shared working directory; "
    "files you save there stay available to later blocks, turns and agents. You see the output "
    "of your code and may continue for up to {max_turns} turns; reply without code when done.\n\n"
    "## Task\n{task}\n\n## Files in the working directory\n{files}\n")

DS_DATA_ENGINEER = DS_HEADER + (
    "\n## Your job: load, explore and preprocess the data\n"
    "- Load train.csv and test.csv, look at shapes, types, target and missing values.\n"
    "- Clean and encode features; fit every transformer on the training data only and apply "
    "the very same transformation to the test data (no leakage; deterministic).\n"
    "- You MUST save these three files with pickle: X_train.pkl (training features), "
    "y_train.pkl (training target) and X_test.pkl (test features, same columns as X_train). "
    "Save fitted transformers too (e.g. scaler.pkl).\n"
    "  Example: `import pickle; pickle.dump(X_train, open('X_train.pkl', 'wb'))`\n"
    "- Finish by printing a summary block:\n"
    "---PREPROCESSING_SUMMARY---\nshapes, target, features, missing-value handling, saved files\n"
    "---END_SUMMARY---\n")

DS_MODELER = DS_HEADER + (
    "\n## Preprocessing summary from the Data Engineer\n{de_summary}\n"
    "\n## Your job: train the model\n"
    "- Check that X_train.pkl and y_train.pkl exist and load them.\n"
    "- Choose suitable algorithms (e.g. random forests or gradient boosting), compare them with "
    "cross-validation and tune the best one.\n"
    "- You MUST save the final fitted model as model.pkl.\n"
    "- Finish by printing a summary block:\n"
    "---MODEL_SUMMARY---\nmodel, validation scores, saved files\n---END_SUMMARY---\n")

DS_ANALYST = DS_HEADER + (
    "{warnings}"
    "\n## Preprocessing summary from the Data Engineer\n{de_summary}\n"
    "\n## Model summary from the Modeler\n{modeler_summary}\n"
    "\n## Your job: predict and write the submission\n"
    "- Load model.pkl and X_test.pkl, and predict the test set.\n"
    "- Take the ids from test.csv and write submission.csv with the id column first and the "
    "prediction column(s) named as the competition expects, one row per test id.\n"
    "- Print checks: the row count, the columns and a few rows of submission.csv.\n")

DS_MISSING_WARNING = ("\n**WARNING: the working directory has no {what} file. Earlier agents "
                      "may have failed; check the files and recreate what you need.**\n")

DS_ROLE_TITLES = {"data_engineer": "Data Engineer", "modeler": "Modeler", "analyst": "Analyst"}

