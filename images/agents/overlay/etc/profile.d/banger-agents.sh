# banger's agents image: the coding agents and npm are pinned at image build time (`banger image
# show debian-bookworm-agents` lists the versions); updating them in place would leave the image's
# metadata wrong, so their self-updaters and update notices are off. Rebuild the image to update.
export DISABLE_AUTOUPDATER=1
export NPM_CONFIG_UPDATE_NOTIFIER=false
