import {execFile} from 'node:child_process'
import {readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {holdVmLock, vmSkipReason} from '../engine/helpers.js'
import {BIN, FIXTURES, ROOT, ovm, tempDir} from '../helpers/cli.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'
import {type FakeSigstore, TestOidc, startFakeSigstore} from '../sign/fake-sigstore.js'

const run = promisify(execFile)

describe.skipIf(vmSkipReason() || !registryAvailable())('examples/ci/build-sign-push.sh', () => {
  const tmp = tempDir('ovm-ci-')
  const home = join(tmp.path, 'home')
  let reg: TestRegistry
  let release: () => void
  beforeAll(async () => {
    release = await holdVmLock()
    reg = await startRegistry()
  })
  afterAll(async () => {
    await reg?.stop()
    release?.()
    tmp.cleanup()
  })

  it('validates, builds, signs with provenance, pushes and verifies', async () => {
    const env = {OVM_KEY_PASSWORD: 'ci'}
    expect((await ovm(['key', 'generate', '--out', join(tmp.path, 'release')], {home, env})).code).toBe(0)
    const ctx = join(tmp.path, 'app')
    expect((await ovm(['init', '--template', 'busybox', ctx], {home})).code).toBe(0)
    const {stdout} = await run('bash', [join(ROOT, 'examples/ci/build-sign-push.sh'), ctx, 'ci/app:1'], {
      cwd: tmp.path,
      env: {
        ...process.env,
        ...env,
        OVM: `${process.execPath} ${BIN}`,
        OVM_HOME: home,
        CI: 'true',
        REGISTRY: reg.host,
        KERNEL_ROOT: join(FIXTURES, 'kernel-root'),
        OVM_KEY: join(tmp.path, 'release.key'),
        OVM_PUB: join(tmp.path, 'release.pub'),
      },
    })
    const build = JSON.parse(readFileSync(join(tmp.path, 'build.json'), 'utf8'))
    expect(stdout).toContain(`built, signed, pushed and verified ${reg.host}/ci/app:1@${build.result.digest}`)
    const verify = JSON.parse(readFileSync(join(tmp.path, 'verify.json'), 'utf8'))
    expect(verify.verified.map((v: {predicateType: string}) => v.predicateType).sort()).toEqual(['https://sigstore.dev/cosign/sign/v1', 'https://slsa.dev/provenance/v1'])
  })

  it('keyless: signs through Fulcio and Rekor with the CI token and verifies by identity', async () => {
    const issuer = 'https://token.ci.ovm.test'
    const oidc = new TestOidc(issuer)
    const sig: FakeSigstore = await startFakeSigstore({oidc})
    try {
      const root = join(tmp.path, 'trusted_root.json')
      writeFileSync(root, JSON.stringify(sig.root))
      const email = 'ci-bot@ovm.test'
      const ctx = join(tmp.path, 'app2')
      expect((await ovm(['init', '--template', 'busybox', ctx], {home})).code).toBe(0)
      const {stdout} = await run('bash', [join(ROOT, 'examples/ci/build-sign-push.sh'), ctx, 'ci/app:2'], {
        cwd: tmp.path,
        env: {
          ...process.env,
          OVM: `${process.execPath} ${BIN}`,
          OVM_HOME: home,
          CI: 'true',
          REGISTRY: reg.host,
          KERNEL_ROOT: join(FIXTURES, 'kernel-root'),
          OVM_KEY: '',
          ACTIONS_ID_TOKEN_REQUEST_URL: '',
          SIGSTORE_ID_TOKEN: oidc.token({sub: '42', email, email_verified: true}),
          SIGSTORE_FULCIO_URL: sig.fulcio.url,
          SIGSTORE_REKOR_URL: sig.rekor.url,
          NO_PROXY: '127.0.0.1,localhost',
          OVM_IDENTITY: email,
          OVM_ISSUER: issuer,
          OVM_TRUSTED_ROOT: root,
        },
      })
      const build = JSON.parse(readFileSync(join(tmp.path, 'build.json'), 'utf8'))
      expect(stdout).toContain(`built, signed, pushed and verified ${reg.host}/ci/app:2@${build.result.digest}`)
      const verify = JSON.parse(readFileSync(join(tmp.path, 'verify.json'), 'utf8'))
      expect(verify.verified).toHaveLength(2)
      for (const v of verify.verified) expect(v.identity).toMatchObject({subject: email, issuer})
    } finally {
      await sig.close()
    }
  })
})
