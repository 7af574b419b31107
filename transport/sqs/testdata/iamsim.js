// iamsim.js evaluates IAM requests against identity policies with
// @cloud-copilot/iam-simulate, a real IAM policy evaluator. The Go tests in
// transport/sqs run it: `node iamsim.js < cases.json`.
//
// Input:  {"cases": [{"name", "principal", "account", "action", "resource",
//                     "policies": [{"name", "policy"}], "resourcePolicy",
//                     "context": {…}}]}
// Output: [{"name", "result"}] where result is Allowed, ImplicitlyDenied,
//         ExplicitlyDenied, or "error: …" when the simulator could not run
//         the case (a bad policy, an unknown action).
//
// The simulator is installed in ./npm (npm ci --prefix npm).
'use strict';

const path = require('path');
const { createRequire } = require('module');
const { runSimulation } = createRequire(path.join(__dirname, 'npm', 'package.json'))('@cloud-copilot/iam-simulate');

async function main() {
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  const { cases } = JSON.parse(input);
  const out = [];
  for (const c of cases) {
    const sim = {
      request: {
        principal: c.principal,
        action: c.action,
        resource: { resource: c.resource, accountId: c.account },
        contextVariables: c.context || {},
      },
      identityPolicies: c.policies || [],
      serviceControlPolicies: [],
      resourceControlPolicies: [],
    };
    if (c.resourcePolicy) sim.resourcePolicy = c.resourcePolicy;
    const res = await runSimulation(sim, {});
    if (res.resultType === 'error') {
      out.push({ name: c.name, result: 'error: ' + JSON.stringify(res.errors) });
    } else {
      out.push({ name: c.name, result: res.overallResult });
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + '\n');
  process.exit(1);
});
