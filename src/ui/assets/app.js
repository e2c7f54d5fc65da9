// keygate console and portal: progressive enhancement only. Every page works
// without this file (the CSP allows no inline script; this is the only one).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Copy buttons: <button data-copy="element-id">.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const status = document.getElementById(button.dataset.copy + "-status");
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        if (status) status.textContent = "Copied to the clipboard.";
      } catch (e) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        if (status) status.textContent = "Selected: press Ctrl+C (or Cmd+C) to copy.";
      }
    });
  }
  // Live filter: <input data-filter="table-id"> hides rows not containing the text.
  for (const input of document.querySelectorAll("input[data-filter]")) {
    const table = document.getElementById(input.dataset.filter);
    const count = document.getElementById(input.dataset.filter + "-count");
    input.hidden = false;
    input.addEventListener("input", () => {
      const needle = input.value.trim().toLowerCase();
      let shown = 0;
      for (const row of table.tBodies[0].rows) {
        const match = row.textContent.toLowerCase().includes(needle);
        row.hidden = !match;
        if (match) shown += 1;
      }
      if (count) count.textContent = shown + " shown";
    });
  }
  // Confirm by typing: <input data-confirm="expected"> enables its form's danger button.
  for (const input of document.querySelectorAll("input[data-confirm]")) {
    const button = input.form.querySelector("button.danger");
    const update = () => { button.disabled = input.value !== input.dataset.confirm; };
    input.addEventListener("input", update);
    update();
  }
});
